"""The Triton kernels of fusion_block, called directly through their launchers.

Forward against the reference (outputs and the BatchNorm statistics, train and eval); backward
against ``torch.autograd.grad`` through the reference with random gradients on all three outputs
(the reference is fed the pre-resized image, so its image gradient is the gradient w.r.t. X_k that
the op returns); an fp64 ``gradcheck`` of the kernels' own backward. Without a GPU the kernels run
through the Triton interpreter (selected below, before the kernel module is imported), in
float32/float64 on small odd shapes whose tiles do not divide them; float16/bfloat16 need a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    # The interpreter is chosen when a kernel is decorated, i.e. when the module is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from inpaint_fast import reference  # noqa: E402
from inpaint_fast.fusion_block_params import RUNNING_STATS, TRAINABLE  # noqa: E402
from inpaint_fast.triton_kernels import fusion_block as kernels  # noqa: E402
from inpaint_fast.triton_kernels import interpreter_mode  # noqa: E402
from op_samples import fusion_params_clone, fusion_params_to, fusion_sample_inputs, fusion_saved_params  # noqa: E402

ON_GPU = torch.cuda.is_available() and not interpreter_mode()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the interpreter cannot compute in bf16)")

# (B, c, h, w, H, W, A). The interpreter's tiles are 8×8 (halo kernel: 8×16 lanes → 6×14 outputs),
# so every shape has partial tiles, and 16×16 has tile seams in both directions. Image at 1×, 2×
# and the non-integer 10×14 → 7×9; c = 4 (DFNet's fuse_0), 5, 64 (two 32-channel chunks).
SHAPES = [
    (2, 4, 16, 16, 16, 16, 3),
    (1, 64, 7, 9, 14, 18, 3),
    (2, 5, 7, 9, 10, 14, 1),
    (3, 5, 3, 5, 6, 10, 1),
]
SHAPE_IDS = ["B{}-c{}-{}x{}-from{}x{}-A{}".format(*s) for s in SHAPES]
EPS = 1e-5


def out_grads(shape, dtype):
    B, _, h, w, _, _, A = shape
    return [torch.randn(B, n, h, w, dtype=torch.float64).to(DEVICE, dtype) for n in (3, A, 3)]


def resized(image, feat):
    return F.interpolate(image, size=feat.shape[-2:], mode="bilinear", align_corners=False)


def reference_run(feat, image, params, training, grads):
    """Reference in fp64: outputs, batch statistics (mean, biased var ×2) and the 14 op gradients.

    The reference gets X_k (already resized, so its resize is the identity) as its image and
    momentum 1, so its running statistics become the batch statistics (unbiased variance).
    """
    d = lambda t: t.detach().double().cpu()  # noqa: E731
    f = d(feat).requires_grad_(True)
    xk = resized(d(image), f).requires_grad_(True)
    p = fusion_params_clone(fusion_params_to(params, "cpu", torch.float64), leaves=True)
    outs = reference.fusion_block(f, xk, p, training=training, momentum=1.0, eps=EPS)
    wrt = [f, xk] + [getattr(p, k) for k in TRAINABLE]
    in_grads = torch.autograd.grad(outs, wrt, [d(g) for g in grads])
    n = feat.shape[0] * feat.shape[2] * feat.shape[3]
    unbias = (n - 1) / n if training else 1.0
    stats = [p.bn1_running_mean, p.bn1_running_var * unbias, p.bn2_running_mean, p.bn2_running_var * unbias]
    return [o.detach() for o in outs], [s.detach() for s in stats], list(in_grads)


def triton_run(feat, image, params, training, grads, fused=True):
    out, alpha, raw, *stats = kernels.fusion_block_fwd(feat, image, *params, training, EPS, fused=fused)
    bwd = kernels.fusion_block_bwd(*grads, feat, image, *fusion_saved_params(params, stats), training, EPS)
    return [out, alpha, raw], stats, list(bwd)


def check(name, got, want, dtype, shape=None, rtol=None):
    """fp64: 1e-10 relative to the magnitude; fp32: 2e-5 (sums over a few hundred pixels)."""
    assert got.shape == (shape if shape is not None else want.shape), f"{name}: shape {tuple(got.shape)}"
    rtol = rtol or (1e-10 if dtype == torch.float64 else 2e-5)
    mag = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got.detach().double().cpu() - want).abs().max().item() if want.numel() else 0.0
    assert err <= rtol * mag, f"{name}: max error {err:.3e} > {rtol * mag:.3e} ({dtype})"


GRAD_NAMES = ["grad_feat", "grad_image_resized"] + [f"grad_{k}" for k in TRAINABLE]
STAT_NAMES = ["bn1_mean", "bn1_var", "bn2_mean", "bn2_var"]


def check_all(feat, image, params, training, grads, dtype, fused=True):
    outs, stats, in_grads = triton_run(feat, image, params, training, grads, fused=fused)
    for group in (outs + stats, in_grads):  # op outputs are fresh tensors: none aliases another
        assert len({t.untyped_storage().data_ptr() for t in group}) == len(group)
    r_outs, r_stats, r_grads = reference_run(feat, image, params, training, grads)
    for name, got, want in zip(["out", "alpha", "raw"], outs, r_outs):
        assert got.dtype == dtype and got.is_contiguous(), name
        check(name, got, want, dtype)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for name, got, want in zip(STAT_NAMES, stats, r_stats):
        assert got.dtype == stat_dtype, name
        check(name, got, want, dtype)
    likes = [feat, resized(image, feat)] + [getattr(params, k) for k in TRAINABLE]
    for name, got, want, like in zip(GRAD_NAMES, in_grads, r_grads, likes):
        assert got.dtype == like.dtype and got.shape == like.shape and got.is_contiguous(), name
        check(name, got, want, dtype)


# ---------------------------------------------------------------------------------------------
# Forward and backward against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_reference(shape, dtype, training):
    feat, image, params = fusion_sample_inputs(shape, dtype, device=DEVICE)
    check_all(feat, image, params, training, out_grads(shape, dtype), dtype)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_two_launch_eval_and_c_not_multiple_of_chunk(training):
    """The unfused eval path (R kernel, then the blend kernel) and a c > 32 not a multiple of the chunk."""
    shape = (2, 37, 7, 9, 10, 14, 3)
    # Cm not a power of two either
    feat, image, params = fusion_sample_inputs(shape, torch.float64, cm=20, device=DEVICE)
    check_all(feat, image, params, training, out_grads(shape, torch.float64), torch.float64, fused=False)


@pytest.mark.parametrize(
    "shape, cm",
    [((2, 1, 1, 3, 1, 3, 3), 1), ((1, 2, 9, 17, 5, 40, 3), 7), ((2, 40, 3, 1, 1, 1, 1), 32)],
    ids=["c1-Cm1-1x3", "upsample-rows-5x40-to-9x17", "1x1-image-w1"],
)
def test_degenerate_shapes(shape, cm):
    """c = 1 and Cm = 1 (size-1 blocks), one-pixel rows/columns, an image smaller than the feature."""
    feat, image, params = fusion_sample_inputs(shape, torch.float64, cm=cm, device=DEVICE)
    check_all(feat, image, params, True, out_grads(shape, torch.float64), torch.float64)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_strided_inputs(layout, training):
    """Non-contiguous feat/image/output grads are read through their strides; outputs are contiguous."""
    shape = (2, 5, 7, 9, 10, 14, 3)
    feat, image, params = fusion_sample_inputs(shape, torch.float64, layout, device=DEVICE)
    grads = [g.transpose(2, 3).contiguous().transpose(2, 3) for g in out_grads(shape, torch.float64)]
    grads[2] = grads[2].contiguous(memory_format=torch.channels_last)
    check_all(feat, image, params, training, grads, torch.float64)


def test_image_gradient_maps_back():
    """grad_image_resized through the bilinear backward equals the reference's full-resolution image grad."""
    shape = (2, 4, 7, 9, 10, 14, 3)
    feat, image, params = fusion_sample_inputs(shape, torch.float64, device=DEVICE)
    grads = out_grads(shape, torch.float64)
    _, _, in_grads = triton_run(feat, image, params, True, grads)
    grad_image = torch.ops.aten.upsample_bilinear2d_backward(in_grads[1], [7, 9], list(image.shape), False, None, None)
    f, img = feat.detach().clone().requires_grad_(True), image.detach().clone().requires_grad_(True)
    outs = reference.fusion_block(f, img, fusion_params_clone(params), training=True, eps=EPS)
    _, want = torch.autograd.grad(outs, [f, img], grads)
    check("grad_image", grad_image, want.cpu(), torch.float64)


def test_inputs_untouched_and_eval_stats_are_copies():
    shape = (1, 4, 5, 6, 5, 6, 3)
    feat, image, params = fusion_sample_inputs(shape, torch.float32, device=DEVICE)
    before = fusion_params_clone(params)
    for training in (True, False):
        fwd = kernels.fusion_block_fwd(feat, image, *params, training, EPS)
        for k, t, was in zip(params._fields, params, before):
            assert torch.equal(t, was), f"{k} was modified (training={training})"
    for got, name in zip(fwd[3:], RUNNING_STATS):  # eval: the running statistics, as fresh tensors
        assert torch.equal(got, getattr(params, name)) and got.data_ptr() != getattr(params, name).data_ptr()


# ---------------------------------------------------------------------------------------------
# gradcheck of the kernels' own backward
# ---------------------------------------------------------------------------------------------
class _TritonFusionBlock(torch.autograd.Function):
    """The launchers as an autograd function of (feat, image, trainable params): what the op does."""

    @staticmethod
    def forward(ctx, training, params, feat, image, *trainable):
        params = params._replace(**dict(zip(TRAINABLE, trainable)))
        out, alpha, raw, *stats = kernels.fusion_block_fwd(feat, image, *params, training, EPS)
        ctx.training = training
        ctx.save_for_backward(feat, image, *fusion_saved_params(params, stats))
        return out, alpha, raw

    @staticmethod
    def backward(ctx, g_out, g_alpha, g_raw):
        feat, image, *params = ctx.saved_tensors
        grads = kernels.fusion_block_bwd(g_out.contiguous(), g_alpha.contiguous(), g_raw.contiguous(), feat, image,
                                         *params, ctx.training, EPS)
        grad_image = torch.ops.aten.upsample_bilinear2d_backward(
            grads[1], list(feat.shape[2:]), list(image.shape), False, None, None
        )
        return (None, None, grads[0], grad_image) + tuple(grads[2:])


@pytest.mark.parametrize("shape", [(2, 3, 3, 4, 5, 7, 3), (2, 2, 4, 3, 4, 3, 1)], ids=["A3-resize", "A1-identity"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradcheck(shape, training):
    feat, image, params = fusion_sample_inputs(shape, torch.float64, cm=4, device=DEVICE)
    inputs = [feat, image] + [getattr(params, k) for k in TRAINABLE]
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    fn = lambda *xs: _TritonFusionBlock.apply(training, params, *xs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# The GPU run (benchmarks/gpu_session.sh): the public op, cases in tests/gpu_cases.py — DFNet's six
# levels, fp32 at both matmul precisions, fp16, bf16, kink-free BatchNorms, poisoned outputs,
# bitwise reruns, opcheck and torch.compile; on the CPU only with INPAINT_FAST_GPU_TESTS=dry.
# ---------------------------------------------------------------------------------------------
import gpu_cases as gc  # noqa: E402

GPU_RUN = gc.gpu_test("fusion_block", "triton")


@GPU_RUN
@pytest.mark.parametrize("case", gc.fusion_cases(), ids=gc.fusion_id)
def test_gpu_run_fusion(case):
    gc.fusion_parity("triton", case)


@GPU_RUN
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gpu_run_fusion_opcheck(training):
    gc.fusion_opcheck("triton", training)


@GPU_RUN
def test_gpu_run_fusion_compile_fullgraph():
    gc.fusion_compile("triton")


# ---------------------------------------------------------------------------------------------
# Without a GPU: every kernel variant still compiles for one (sm_90 cubin, through ptxas)
# ---------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from inpaint_fast.triton_kernels import fusion_block as K

TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
done, failed = set(), []

class Compile:
    # stands in for a kernel: compiles each launch's specialisation for sm_90 instead of running it
    def __init__(self, fn):
        self.fn = fn
    def __getitem__(self, grid):
        return self
    def __call__(self, *args, num_warps=4, **kwargs):
        vals = dict(zip(self.fn.arg_names, args), **kwargs)
        sig, consts, attrs = {}, {}, {}
        for i, (name, p) in enumerate(zip(self.fn.arg_names, self.fn.params)):
            v = vals[name]
            if p.is_constexpr or (isinstance(v, int) and not isinstance(v, bool) and v == 1):
                sig[name], consts[name] = "constexpr", v  # ints equal to 1 are specialised, as at launch
            elif isinstance(v, torch.Tensor):
                sig[name] = TYPES[v.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(v, int):
                sig[name] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[name] = "fp32"
        key = (self.fn.__name__, str(sig), str(sorted(consts.items(), key=str)), str(attrs))
        if key in done:
            return
        done.add(key)
        try:
            triton.compile(ASTSource(self.fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps})
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{self.fn.__name__} {consts}: {str(exc)[-2000:]}")

for name in ("_map_kernel", "_fwd_kernel", "_bwd_alpha_kernel", "_bwd_a1_kernel"):
    setattr(K, name, Compile(getattr(K, name)))
K._max_programs = lambda t: 64
for dtype in (torch.float32, torch.bfloat16):
    for A in (3, 1):
        g = lambda *s: torch.randn(*s).to(dtype)
        p = [g(3, 64, 1, 1), g(3), g(32, 6, 1, 1), g(32), g(32), g(32), g(32), g(32).abs() + 1,
             g(A, 32, 3, 3), g(A), g(A), g(A), g(A), g(A).abs() + 1, g(A, A, 1, 1), g(A)]
        feat, image = g(2, 64, 32, 48), g(2, 3, 64, 96)
        for training in (False, True):
            K.fusion_block_fwd(feat, image, *p, training, 1e-5)
        K.fusion_block_fwd(feat, image, *p, False, 1e-5, fused=False)
        st = [torch.zeros(32), torch.ones(32), torch.zeros(A), torch.ones(A)]
        grads = [g(2, 3, 32, 48), g(2, A, 32, 48), g(2, 3, 32, 48)]
        for training in (False, True):
            K.fusion_block_bwd(*grads, feat, image, *p[:6], st[0], st[1], *p[8:12], st[2], st[3], *p[14:],
                               training, 1e-5)
print(f"compiled {len(done)} kernel variants, {len(failed)} failed")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernels are compiled and run by the tests above")
def test_kernels_compile_for_sm90():
    """The interpreter never compiles; this builds every kernel variant the launchers use (fp32 and
    bf16, A = 1 and 3, train/eval, fused/unfused) into sm_90 cubins, so GPU-only codegen errors
    (layouts, unsupported ops, ptxas) show up on a CPU-only machine."""
    import subprocess
    import sys

    import triton.backends

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert int(proc.stdout.split("compiled ")[1].split()[0]) >= 20, proc.stdout  # not vacuous
