"""short_long_attention in Triton: flash-style forward and backward of PIC's attention.

Launchers with exactly the contract of the compiled ops (inpaint_fast/ops/schemas.inc, docs/short_long_attention.md):

    short_long_attention_fwd(q, x, gamma, pre, mask, alpha, scale) -> (y, cf, sa, ca, lse)
    short_long_attention_bwd(grad_y, grad_cf, q, x, gamma, pre, mask, alpha, sa, ca, lse, scale)
        -> (grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha)

Math (N = H·W positions, row-major): E = scale·qᵀq, A = softmax over keys (never masked),
sa = x Aᵀ, ca = pre Aᵀ, y = gamma·sa + x, cf = alpha·(1 − mask)·ca + mask·pre,
lse = row logsumexp of E. The N×N map never exists in memory.

Kernels (all read NCHW tensors through their strides; position n = h·W + w):

* ``_fwd_kernel`` — grid (⌈N/BLOCK_M⌉, B, value chunks). One program owns BLOCK_M query rows
  and one BLOCK_V-wide chunk of the value channels of *both* streams (x and pre). It loads its
  q tile once, streams key tiles of the same q tensor, runs one online softmax (base 2, scale·log2e
  folded into the energies, statistics in fp32 — fp64 for fp64 inputs) and feeds both value
  streams from it; the epilogue applies gamma, the residual, alpha, (1 − mask) and mask·pre.
  With C, Cp ≤ BLOCK_V (PIC: 128) there is one chunk and no energy is computed twice.
* ``_bwd_preprocess_kernel`` — grid (⌈N/BLOCK⌉, B): δ_i = gamma·Σ_c dy·sa + alpha(1 − m_i)·Σ_c dcf·ca
  (both streams), grad_mask, and per-block partial sums of grad_gamma / grad_alpha (reduced by one
  deterministic ``torch.sum`` afterwards, no atomics).
* ``_bwd_dq_kernel`` — grid (⌈N/BLOCK_M⌉, B). With ``KEY_SIDE=False`` a program owns query rows
  i and sums Σ_j dS_ij q_j into an fp32 buffer (the "dQ" half); with ``KEY_SIDE=True`` it owns key
  columns j, sums Σ_i dS_ij q_i (the "dK" half), adds the buffer and writes grad_q =
  scale·(dS + dSᵀ)q. dP sums over both value streams in value-channel chunks.
* ``_bwd_dkdv_kernel`` — grid (⌈N/BLOCK_N⌉, B, value chunks): grad_x = dy + gamma·Pᵀdy and
  grad_pre = m·dcf + alpha·Pᵀ((1 − m)dcf) for one key block and one channel chunk. When every value
  channel fits one chunk it also does the "dK" half (``FUSE_DK``, FlashAttention-2's dK/dV loop),
  so the KEY_SIDE launch is skipped.

Precision: fp32 follows PyTorch's float32 matmul setting for CUDA (either API; see
``inpaint_fast.triton_kernels.fp32_matmul_allows_tf32``): TF32 allowed → ``tf32`` dots, the default
("highest") → ``tf32x3`` (3xTF32, about fp32 accuracy on tensor cores; see ``_precision``);
fp16/bf16 multiply in their dtype and accumulate in fp32; fp64 computes in fp64 (meant for the
interpreter's gradcheck). Under ``TRITON_INTERPRET=1`` a single small tile is used so CPU tests stay
fast; on a GPU the tile sizes are autotuned over ``TILES`` (or fixed to each list's first entry with
``INPAINT_FAST_TRITON_AUTOTUNE=0``).

Index range: per-image offsets (``pid_b * s_xb`` is int64, everything inside an image int32) are
int32, so every (B, ·, H, W) tensor must have C·H·W < 2³¹ elements per image; the launchers refuse
larger inputs up front (``_check_index_range``) instead of reading out of bounds.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import autotune_enabled, check_index_range, fp32_matmul_allows_tf32, interpreter_mode
from ._dtypes import accumulator

__all__ = ["short_long_attention_fwd", "short_long_attention_bwd"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_INTERPRET = interpreter_mode()
# Widest value-channel chunk one program holds (accumulators are BLOCK × BLOCK_V per stream).
MAX_BLOCK_V = 128
# Row block of the preprocessing kernel (its partial-sum buffers are sized from it), and its
# (widest channel chunk, warps): (64, 4) spilled 1.6 KB with Triton 3.9 (four 64×64 fp32 tiles
# per step); 32-wide chunks compile to ~160 registers with both Triton versions.
_PRE_BLOCK = 32 if _INTERPRET else 64
PRE_TILE = (32, 4)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
# Tile configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) per target, kernel and operand
# class, the class being "half" (fp16/bf16 operands), the fp32 dot precision ("tf32", "tf32x3") or
# "ieee" (fp64). Kernels: "fwd", "dq" (_bwd_dq_kernel, both halves), "dkdv" (_bwd_dkdv_kernel) and
# "dkdv_fused" (the same with FUSE_DK: it holds x_j, pre_j and a third accumulator across its loop).
# The first entry of each list is the fixed configuration (autotuning off:
# INPAINT_FAST_TRITON_AUTOTUNE=0); the whole list is what the autotuner may pick from.
#
# `make gpu-compile-check` compiles every entry for sm_90 and sm_80 at PIC's shapes, one-chunk
# (C ≤ 64) and wide (C = 256) shapes and the benchmark's, and the first entry also at every shape
# of the GPU run (odd N, channels_last, strided), and fails on a spill over 32 bytes or on shared
# memory over the limit. The lists keep what compiled cleanly at all of those in sweeps of BLOCK_M,
# BLOCK_N ∈ {16, 32, 64, 128}, 4/8 warps, 1–3 stages (benchmarks/NOTES.md, "Checks for the first
# GPU run"): a tile clean at PIC's N = 4096 can spill at N = 97 (no 16-divisibility, other masks).
# What shaped them: two value streams of 128 channels make the accumulators 2·BLOCK·128 fp32
# values, so 4 warps spill at any 64-row tile; fp32 operands double a pipeline stage's shared
# memory (64×64 with 3 stages needs 229 KB, over sm_80's 163 KB); 3xTF32 splits every operand tile
# in registers (smaller tiles, and BWD_MAX_BLOCK_V); sm_80's mma.sync layouts need more registers
# than sm_90's for the same tile, hence its own, smaller lists.
_SM90 = {
    "fwd": {
        "half": [(32, 64, 8, 3), (32, 64, 8, 2), (32, 32, 8, 2)],
        "tf32": [(32, 64, 8, 2), (64, 32, 8, 2), (64, 32, 8, 3), (32, 32, 8, 2)],
        "tf32x3": [(32, 32, 8, 3), (32, 32, 8, 2), (32, 16, 8, 2), (16, 32, 8, 2)],
        "ieee": [(16, 32, 8, 1)],
    },
    "dq": {
        "half": [(64, 32, 8, 3), (128, 32, 8, 2), (32, 32, 8, 2)],
        "tf32": [(32, 16, 8, 2)],
        "tf32x3": [(16, 32, 8, 2), (32, 16, 8, 2), (16, 16, 8, 2)],
        "ieee": [(16, 32, 8, 1)],
    },
    "dkdv": {
        "half": [(32, 64, 8, 2), (32, 64, 8, 3), (16, 64, 8, 2)],
        "tf32": [(32, 64, 8, 2)],
        "tf32x3": [(32, 32, 8, 2), (64, 32, 8, 2), (16, 64, 8, 2), (32, 16, 8, 2), (16, 32, 8, 2)],
        "ieee": [(16, 32, 8, 1)],
    },
    "dkdv_fused": {
        "half": [(16, 16, 8, 2), (16, 16, 8, 3), (16, 16, 4, 2)],
        "tf32": [(32, 16, 8, 2)],
    },
}
_SM80 = {
    "fwd": {**_SM90["fwd"], "half": [(32, 32, 8, 2)], "tf32": [(32, 64, 8, 2), (32, 32, 8, 2)],
            "tf32x3": [(32, 32, 8, 3), (32, 16, 8, 2), (16, 32, 8, 2), (16, 16, 8, 2)]},
    "dq": {**_SM90["dq"], "half": [(64, 32, 8, 3), (32, 32, 8, 2)], "tf32x3": [(16, 32, 8, 2), (16, 16, 8, 2)]},
    "dkdv": {**_SM90["dkdv"], "tf32x3": [(32, 32, 8, 2), (32, 16, 8, 2), (16, 32, 8, 2)]},
    "dkdv_fused": {},  # sm_80 never fuses (FUSED_DK_CLASSES)
}
TILES = {90: _SM90, 80: _SM80}
# The backward's widest value chunk per operand class where narrower than MAX_BLOCK_V: with
# 3xTF32 or fp64 operands no 128-wide backward tile compiles without spills; 64 costs a second
# chunk at PIC's C = 128.
BWD_MAX_BLOCK_V = {"tf32x3": 64, "ieee": 64}
# fp64 (FMA dots of 8-byte values) keeps its forward chunks at 64 too.
FWD_MAX_BLOCK_V = {"ieee": 64}
# Operand classes whose dkdv kernel also does the dK half when one chunk holds every channel
# (FUSE_DK), per target: the fused kernel spills at every tile with 3xTF32 or fp64 operands, and
# on sm_80 no tile is clean at every channel block (TF32; fp16/bf16 with a 16-wide head and a
# 128-wide chunk), so those take the separate dK launch (_bwd_dq_kernel with KEY_SIDE). The interpreter has no register file: it fuses
# whenever one chunk holds the channels, so the CPU tests cover the fused path in fp32/fp64 too
# (and the unfused one with several chunks, or FUSE_DK_UNDER_INTERPRETER = False).
FUSED_DK_CLASSES = {90: ("half", "tf32"), 80: ()}
FUSE_DK_UNDER_INTERPRETER = True
# Under the interpreter: one small tile (programs run one after another in numpy).
_INTERPRET_TILE = (32, 32, 4, 1)
OPERAND_CLASSES = ("half", "tf32", "tf32x3", "ieee")


def _config(tile) -> triton.Config:
    m, n, w, st = tile
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)


def operand_class(dtype: torch.dtype, prec: str) -> str:
    """The key of TILES for operands of ``dtype`` multiplied at dot precision ``prec``."""
    return "half" if dtype in (torch.float16, torch.bfloat16) else prec


def target_family() -> int:
    """90 for sm_90 and newer, else 80: which TILES apply, from the target Triton compiles for
    (its active driver's, so the offline compile of inpaint_fast.triton_kernels.aot is asked too)."""
    from triton.runtime.driver import driver

    return 90 if driver.active.get_current_target().arch >= 90 else 80


def fixed_tile(kind: str, cls: str, family: int = 90):
    """The one configuration a kernel launches with when not autotuning."""
    return _INTERPRET_TILE if _INTERPRET else TILES[family][kind][cls][0]


def _fuses_dk(n_chunks: int, cls: str, block_d: int) -> bool:
    if n_chunks != 1:
        return False
    if _INTERPRET:
        return FUSE_DK_UNDER_INTERPRETER
    return cls in FUSED_DK_CLASSES[target_family()] and block_d >= FUSED_DK_MIN_BLOCK_D


_TUNE_KEY = ["N", "Cq", "C", "Cp", "HAS_PRE", "FLAT", "BLOCK_D", "BLOCK_V", "PREC"]


def _launcher(kind: str, jit_fn, key):
    """kernel(cls, grid) -> a launchable for operand class ``cls``: an autotuner over the target's
    TILES[kind][cls] (one per class and target, all sharing ``jit_fn``'s compiled binaries), or —
    autotuning off, and under the interpreter — ``jit_fn`` bound to the fixed configuration."""
    tuners = {}

    def get(cls: str, grid):
        if not autotune_enabled():
            m, n, w, st = fixed_tile(kind, cls, 90 if _INTERPRET else target_family())
            run = jit_fn[grid]
            return lambda *a, **kw: run(*a, BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st, **kw)
        family = target_family()
        if (cls, family) not in tuners:
            configs = [_config(t) for t in TILES[family][kind][cls]]
            tuners[cls, family] = triton.autotune(configs=configs, key=key)(jit_fn)
        return tuners[cls, family][grid]

    return get


@triton.jit
def _pos(n, W, s_h, s_w, FLAT: tl.constexpr):
    """Element offset of flattened positions n in an (H, W) plane with strides (s_h, s_w).

    FLAT: every tensor's plane is addressable with one stride (contiguous, channels_last, H or W
    of 1); the launcher then passes that stride as s_w.
    """
    if FLAT:
        return n * s_w
    else:
        return (n // W) * s_h + (n % W) * s_w


@triton.jit
def _scale(s, hi, lo, IS_FP64: tl.constexpr):
    """s · (hi + lo): a Python float reaches a compiled kernel as fp32, so fp64 gets the residual."""
    if IS_FP64:
        return s * hi + s * lo
    else:
        return s * hi


@triton.jit
def _fwd_kernel(
    Q, X, PRE, MASK, GAMMA, ALPHA,
    Y, SA, CF, CA, LSE,
    N, W, Cq, C, Cp, qk_hi, qk_lo, ln2_hi, ln2_lo,
    s_qb, s_qc, s_qh, s_qw,
    s_xb, s_xc, s_xh, s_xw,
    s_pb, s_pc, s_ph, s_pw,
    s_mb, s_mh, s_mw,
    s_yb, s_yc, s_yh, s_yw,
    s_cb, s_cc, s_ch, s_cw,
    s_lb, s_lh, s_lw,
    HAS_PRE: tl.constexpr, FLAT: tl.constexpr, IS_FP64: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    m_ok = offs_m < N
    d_ok = offs_d < Cq
    vx_ok = offs_v < C
    q_base = Q + pid_b * s_qb
    x_base = X + pid_b * s_xb
    dt = Q.dtype.element_ty

    # The query tile (BLOCK_M, BLOCK_D), loaded once; key tiles of the same tensor below.
    q_i = tl.load(q_base + _pos(offs_m, W, s_qh, s_qw, FLAT)[:, None] + offs_d[None, :] * s_qc,
                  mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc_x = tl.zeros([BLOCK_M, BLOCK_V], ACC)
    if HAS_PRE:
        vp_ok = offs_v < Cp
        p_base = PRE + pid_b * s_pb
        acc_p = tl.zeros([BLOCK_M, BLOCK_V], ACC)

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        k_t = tl.load(q_base + offs_d[:, None] * s_qc + _pos(offs_n, W, s_qh, s_qw, FLAT)[None, :],
                      mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        s = tl.dot(q_i, k_t, input_precision=PREC, out_dtype=ACC)
        s = _scale(s, qk_hi, qk_lo, IS_FP64)  # energies in log2 units
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        corr = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * corr + tl.sum(p, 1)
        pv = p.to(dt)
        v = tl.load(x_base + _pos(offs_n, W, s_xh, s_xw, FLAT)[:, None] + offs_v[None, :] * s_xc,
                    mask=n_ok[:, None] & vx_ok[None, :], other=0.0)
        acc_x = acc_x * corr[:, None] + tl.dot(pv, v, input_precision=PREC, out_dtype=ACC)
        if HAS_PRE:
            vp = tl.load(p_base + _pos(offs_n, W, s_ph, s_pw, FLAT)[:, None] + offs_v[None, :] * s_pc,
                         mask=n_ok[:, None] & vp_ok[None, :], other=0.0)
            acc_p = acc_p * corr[:, None] + tl.dot(pv, vp, input_precision=PREC, out_dtype=ACC)
        m_i = m_new

    # Epilogue: normalise, gate, add the residual / the visible part of pre.
    inv_l = 1.0 / l_i
    lse = _scale(m_i, ln2_hi, ln2_lo, IS_FP64) + tl.log(l_i)  # natural-log units
    tl.store(LSE + pid_b * s_lb + _pos(offs_m, W, s_lh, s_lw, FLAT), lse.to(LSE.dtype.element_ty),
             mask=m_ok & ((offs_m * 0 + pid_v) == 0))
    gamma = tl.load(GAMMA).to(ACC)
    sa = acc_x * inv_l[:, None]
    x_i = tl.load(x_base + _pos(offs_m, W, s_xh, s_xw, FLAT)[:, None] + offs_v[None, :] * s_xc,
                  mask=m_ok[:, None] & vx_ok[None, :], other=0.0).to(ACC)
    y = gamma * sa + x_i
    o_off = pid_b * s_yb + _pos(offs_m, W, s_yh, s_yw, FLAT)[:, None] + offs_v[None, :] * s_yc
    o_mask = m_ok[:, None] & vx_ok[None, :]
    tl.store(SA + o_off, sa.to(SA.dtype.element_ty), mask=o_mask)
    tl.store(Y + o_off, y.to(Y.dtype.element_ty), mask=o_mask)
    if HAS_PRE:
        alpha = tl.load(ALPHA).to(ACC)
        mk = tl.load(MASK + pid_b * s_mb + _pos(offs_m, W, s_mh, s_mw, FLAT), mask=m_ok, other=0.0).to(ACC)
        ca = acc_p * inv_l[:, None]
        pre_i = tl.load(p_base + _pos(offs_m, W, s_ph, s_pw, FLAT)[:, None] + offs_v[None, :] * s_pc,
                        mask=m_ok[:, None] & vp_ok[None, :], other=0.0).to(ACC)
        cf = (alpha * (1.0 - mk))[:, None] * ca + mk[:, None] * pre_i
        c_off = pid_b * s_cb + _pos(offs_m, W, s_ch, s_cw, FLAT)[:, None] + offs_v[None, :] * s_cc
        c_mask = m_ok[:, None] & vp_ok[None, :]
        tl.store(CA + c_off, ca.to(CA.dtype.element_ty), mask=c_mask)
        tl.store(CF + c_off, cf.to(CF.dtype.element_ty), mask=c_mask)


@triton.jit
def _bwd_preprocess_kernel(
    GY, GCF, SA, CA, PRE, MASK, GAMMA, ALPHA,
    DELTA, GMASK, PART_G, PART_A,
    N, W, C, Cp, n_blocks,
    s_gyb, s_gyc, s_gyh, s_gyw,
    s_sab, s_sac, s_sah, s_saw,
    s_gcb, s_gcc, s_gch, s_gcw,
    s_cab, s_cac, s_cah, s_caw,
    s_pb, s_pc, s_ph, s_pw,
    s_mb, s_mh, s_mw,
    HAS_PRE: tl.constexpr, FLAT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < N
    gamma = tl.load(GAMMA).to(ACC)
    # t1_i = Σ_c dy·sa (δ's first stream and grad_gamma's summand)
    t1 = tl.zeros([BLOCK_M], ACC)
    pos_gy = _pos(offs_m, W, s_gyh, s_gyw, FLAT)
    pos_sa = _pos(offs_m, W, s_sah, s_saw, FLAT)
    for c0 in range(0, C, BLOCK_V):
        offs_c = c0 + tl.arange(0, BLOCK_V)
        msk = m_ok[:, None] & (offs_c < C)[None, :]
        dy = tl.load(GY + pid_b * s_gyb + pos_gy[:, None] + offs_c[None, :] * s_gyc, mask=msk, other=0.0)
        sa = tl.load(SA + pid_b * s_sab + pos_sa[:, None] + offs_c[None, :] * s_sac, mask=msk, other=0.0)
        t1 += tl.sum(dy.to(ACC) * sa.to(ACC), 1)
    delta = gamma * t1
    tl.store(PART_G + pid_b * n_blocks + pid_m, tl.sum(t1, 0))
    if HAS_PRE:
        alpha = tl.load(ALPHA).to(ACC)
        mk = tl.load(MASK + pid_b * s_mb + _pos(offs_m, W, s_mh, s_mw, FLAT), mask=m_ok, other=0.0).to(ACC)
        # t2_i = Σ_c dcf·ca, t3_i = Σ_c dcf·pre
        t2 = tl.zeros([BLOCK_M], ACC)
        t3 = tl.zeros([BLOCK_M], ACC)
        pos_gc = _pos(offs_m, W, s_gch, s_gcw, FLAT)
        pos_ca = _pos(offs_m, W, s_cah, s_caw, FLAT)
        pos_p = _pos(offs_m, W, s_ph, s_pw, FLAT)
        for c0 in range(0, Cp, BLOCK_V):
            offs_c = c0 + tl.arange(0, BLOCK_V)
            msk = m_ok[:, None] & (offs_c < Cp)[None, :]
            dcf = tl.load(GCF + pid_b * s_gcb + pos_gc[:, None] + offs_c[None, :] * s_gcc,
                          mask=msk, other=0.0).to(ACC)
            ca = tl.load(CA + pid_b * s_cab + pos_ca[:, None] + offs_c[None, :] * s_cac, mask=msk, other=0.0)
            pre = tl.load(PRE + pid_b * s_pb + pos_p[:, None] + offs_c[None, :] * s_pc, mask=msk, other=0.0)
            t2 += tl.sum(dcf * ca.to(ACC), 1)
            t3 += tl.sum(dcf * pre.to(ACC), 1)
        one_m = 1.0 - mk
        delta += alpha * one_m * t2
        # GMASK is a fresh contiguous (B, 1, H, W) tensor.
        tl.store(GMASK + pid_b * N + offs_m, (t3 - alpha * t2).to(GMASK.dtype.element_ty), mask=m_ok)
        tl.store(PART_A + pid_b * n_blocks + pid_m, tl.sum(one_m * t2, 0))
    tl.store(DELTA + pid_b * N + offs_m, delta, mask=m_ok)


@triton.jit
def _bwd_dq_kernel(
    Q, L1, R1, L2, R2, MASK, GAMMA, ALPHA, LSE, DELTA, DQBUF, GQ,
    N, W, Cq, C, Cp, qk_hi, qk_lo, log2e_hi, log2e_lo, sc_hi, sc_lo,
    s_qb, s_qc, s_qh, s_qw,
    s_l1b, s_l1c, s_l1h, s_l1w,
    s_r1b, s_r1c, s_r1h, s_r1w,
    s_l2b, s_l2c, s_l2h, s_l2w,
    s_r2b, s_r2c, s_r2h, s_r2w,
    s_mb, s_mh, s_mw,
    s_lb, s_lh, s_lw,
    s_gqb, s_gqc, s_gqh, s_gqw,
    KEY_SIDE: tl.constexpr, HAS_PRE: tl.constexpr, FLAT: tl.constexpr, IS_FP64: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The dQ half (KEY_SIDE=False) or the dK half (KEY_SIDE=True) of grad_q.

    A program owns positions a (BLOCK_M of them) and loops over positions b. Tiles are oriented
    (a, b): dP_ab = Σ_c L[c, a]·R[c, b] per stream, with (L, R) = (dy, x) / (dcf, pre) for the dQ half
    (a = queries) and (x, dy) / (pre, dcf) for the dK half (a = keys), so one code path serves
    both; only the per-query vectors (lse, δ, mask) come from a or from b.
    """
    pid_a = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_a = pid_a * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    a_ok = offs_a < N
    d_ok = offs_d < Cq
    q_base = Q + pid_b * s_qb
    dt = Q.dtype.element_ty
    q_a = tl.load(q_base + _pos(offs_a, W, s_qh, s_qw, FLAT)[:, None] + offs_d[None, :] * s_qc,
                  mask=a_ok[:, None] & d_ok[None, :], other=0.0)
    gamma = tl.load(GAMMA).to(ACC)
    pos_l1 = _pos(offs_a, W, s_l1h, s_l1w, FLAT)
    if HAS_PRE:
        alpha = tl.load(ALPHA).to(ACC)
        pos_l2 = _pos(offs_a, W, s_l2h, s_l2w, FLAT)
    if not KEY_SIDE:
        lse_a = _scale(tl.load(LSE + pid_b * s_lb + _pos(offs_a, W, s_lh, s_lw, FLAT), mask=a_ok, other=0.0),
                       log2e_hi, log2e_lo, IS_FP64)
        delta_a = tl.load(DELTA + pid_b * N + offs_a, mask=a_ok, other=0.0)
        if HAS_PRE:
            mk_a = tl.load(MASK + pid_b * s_mb + _pos(offs_a, W, s_mh, s_mw, FLAT), mask=a_ok, other=0.0).to(ACC)
            g2_a = alpha * (1.0 - mk_a)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)

    for start_b in range(0, N, BLOCK_N):
        offs_b = start_b + tl.arange(0, BLOCK_N)
        b_ok = offs_b < N
        q_t = tl.load(q_base + offs_d[:, None] * s_qc + _pos(offs_b, W, s_qh, s_qw, FLAT)[None, :],
                      mask=d_ok[:, None] & b_ok[None, :], other=0.0)
        s = _scale(tl.dot(q_a, q_t, input_precision=PREC, out_dtype=ACC), qk_hi, qk_lo, IS_FP64)
        # dP per stream, summed over value-channel chunks.
        pos_r1 = _pos(offs_b, W, s_r1h, s_r1w, FLAT)
        dp1 = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for c0 in range(0, C, BLOCK_V):
            offs_c = c0 + tl.arange(0, BLOCK_V)
            c_ok = offs_c < C
            lt = tl.load(L1 + pid_b * s_l1b + pos_l1[:, None] + offs_c[None, :] * s_l1c,
                         mask=a_ok[:, None] & c_ok[None, :], other=0.0)
            rt = tl.load(R1 + pid_b * s_r1b + offs_c[:, None] * s_r1c + pos_r1[None, :],
                         mask=c_ok[:, None] & b_ok[None, :], other=0.0)
            dp1 += tl.dot(lt.to(dt), rt.to(dt), input_precision=PREC, out_dtype=ACC)
        if HAS_PRE:
            pos_r2 = _pos(offs_b, W, s_r2h, s_r2w, FLAT)
            dp2 = tl.zeros([BLOCK_M, BLOCK_N], ACC)
            for c0 in range(0, Cp, BLOCK_V):
                offs_c = c0 + tl.arange(0, BLOCK_V)
                c_ok = offs_c < Cp
                lt = tl.load(L2 + pid_b * s_l2b + pos_l2[:, None] + offs_c[None, :] * s_l2c,
                             mask=a_ok[:, None] & c_ok[None, :], other=0.0)
                rt = tl.load(R2 + pid_b * s_r2b + offs_c[:, None] * s_r2c + pos_r2[None, :],
                             mask=c_ok[:, None] & b_ok[None, :], other=0.0)
                dp2 += tl.dot(lt.to(dt), rt.to(dt), input_precision=PREC, out_dtype=ACC)
        if KEY_SIDE:
            # a = keys j, b = queries i: P_ij = exp2(s - lse_i) with the query's lse along b.
            lse_b = _scale(tl.load(LSE + pid_b * s_lb + _pos(offs_b, W, s_lh, s_lw, FLAT), mask=b_ok, other=0.0),
                           log2e_hi, log2e_lo, IS_FP64)
            delta_b = tl.load(DELTA + pid_b * N + offs_b, mask=b_ok, other=0.0)
            p = tl.exp2(s - lse_b[None, :])
            dp = gamma * dp1
            if HAS_PRE:
                mk_b = tl.load(MASK + pid_b * s_mb + _pos(offs_b, W, s_mh, s_mw, FLAT), mask=b_ok, other=0.0).to(ACC)
                dp += (alpha * (1.0 - mk_b))[None, :] * dp2
            ds = p * (dp - delta_b[None, :])
        else:
            p = tl.exp2(s - lse_a[:, None])
            dp = gamma * dp1
            if HAS_PRE:
                dp += g2_a[:, None] * dp2
            ds = p * (dp - delta_a[:, None])
        ds = tl.where(b_ok[None, :], ds, 0.0)
        acc += tl.dot(ds.to(dt), tl.trans(q_t), input_precision=PREC, out_dtype=ACC)

    # DQBUF is a fresh contiguous (B, Cq, N) buffer in the accumulation dtype.
    buf_off = pid_b * Cq * N + offs_d[None, :] * N + offs_a[:, None]
    o_mask = a_ok[:, None] & d_ok[None, :]
    if KEY_SIDE:
        acc += tl.load(DQBUF + buf_off, mask=o_mask, other=0.0)
        gq = _scale(acc, sc_hi, sc_lo, IS_FP64)
        tl.store(GQ + pid_b * s_gqb + _pos(offs_a, W, s_gqh, s_gqw, FLAT)[:, None] + offs_d[None, :] * s_gqc,
                 gq.to(GQ.dtype.element_ty), mask=o_mask)
    else:
        tl.store(DQBUF + buf_off, acc, mask=o_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, X, PRE, GY, GCF, MASK, GAMMA, ALPHA, LSE, DELTA, DQBUF,
    GQ, GX, GPRE,
    N, W, Cq, C, Cp, qk_hi, qk_lo, log2e_hi, log2e_lo, sc_hi, sc_lo,
    s_qb, s_qc, s_qh, s_qw,
    s_xb, s_xc, s_xh, s_xw,
    s_pb, s_pc, s_ph, s_pw,
    s_gyb, s_gyc, s_gyh, s_gyw,
    s_gcb, s_gcc, s_gch, s_gcw,
    s_mb, s_mh, s_mw,
    s_lb, s_lh, s_lw,
    s_gqb, s_gqc, s_gqh, s_gqw,
    s_gxb, s_gxc, s_gxh, s_gxw,
    s_gpb, s_gpc, s_gph, s_gpw,
    FUSE_DK: tl.constexpr, HAS_PRE: tl.constexpr, FLAT: tl.constexpr, IS_FP64: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """grad_x / grad_pre for key block j and one value-channel chunk; with FUSE_DK (a single chunk
    holds every channel) also the dK half of grad_q, finished with the dQ buffer."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    n_ok = offs_n < N
    d_ok = offs_d < Cq
    vx_ok = offs_v < C
    q_base = Q + pid_b * s_qb
    dt = Q.dtype.element_ty
    gamma = tl.load(GAMMA).to(ACC)

    k_j = tl.load(q_base + _pos(offs_n, W, s_qh, s_qw, FLAT)[:, None] + offs_d[None, :] * s_qc,
                  mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    acc_x = tl.zeros([BLOCK_N, BLOCK_V], ACC)
    if FUSE_DK:
        x_j = tl.load(X + pid_b * s_xb + _pos(offs_n, W, s_xh, s_xw, FLAT)[:, None] + offs_v[None, :] * s_xc,
                      mask=n_ok[:, None] & vx_ok[None, :], other=0.0)
        acc_k = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    if HAS_PRE:
        alpha = tl.load(ALPHA).to(ACC)
        vp_ok = offs_v < Cp
        acc_p = tl.zeros([BLOCK_N, BLOCK_V], ACC)
        if FUSE_DK:
            pre_j = tl.load(PRE + pid_b * s_pb + _pos(offs_n, W, s_ph, s_pw, FLAT)[:, None] + offs_v[None, :] * s_pc,
                            mask=n_ok[:, None] & vp_ok[None, :], other=0.0)

    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < N
        q_t = tl.load(q_base + offs_d[:, None] * s_qc + _pos(offs_m, W, s_qh, s_qw, FLAT)[None, :],
                      mask=d_ok[:, None] & m_ok[None, :], other=0.0)
        s_t = _scale(tl.dot(k_j, q_t, input_precision=PREC, out_dtype=ACC), qk_hi, qk_lo, IS_FP64)  # (j, i)
        lse_i = _scale(tl.load(LSE + pid_b * s_lb + _pos(offs_m, W, s_lh, s_lw, FLAT), mask=m_ok, other=0.0),
                       log2e_hi, log2e_lo, IS_FP64)
        p_t = tl.exp2(s_t - lse_i[None, :])
        p_t = tl.where(m_ok[None, :], p_t, 0.0)
        dy_i = tl.load(GY + pid_b * s_gyb + _pos(offs_m, W, s_gyh, s_gyw, FLAT)[:, None] + offs_v[None, :] * s_gyc,
                       mask=m_ok[:, None] & vx_ok[None, :], other=0.0).to(dt)
        acc_x += tl.dot(p_t.to(dt), dy_i, input_precision=PREC, out_dtype=ACC)
        if FUSE_DK:
            dp_t = gamma * tl.dot(x_j, tl.trans(dy_i), input_precision=PREC, out_dtype=ACC)
        if HAS_PRE:
            mk_i = tl.load(MASK + pid_b * s_mb + _pos(offs_m, W, s_mh, s_mw, FLAT), mask=m_ok, other=0.0).to(ACC)
            g2_i = alpha * (1.0 - mk_i)
            pos_gc = _pos(offs_m, W, s_gch, s_gcw, FLAT)
            dcf_i = tl.load(GCF + pid_b * s_gcb + pos_gc[:, None] + offs_v[None, :] * s_gcc,
                            mask=m_ok[:, None] & vp_ok[None, :], other=0.0).to(dt)
            acc_p += tl.dot((p_t * (1.0 - mk_i)[None, :]).to(dt), dcf_i, input_precision=PREC, out_dtype=ACC)
            if FUSE_DK:
                dp_t += g2_i[None, :] * tl.dot(pre_j, tl.trans(dcf_i), input_precision=PREC, out_dtype=ACC)
        if FUSE_DK:
            delta_i = tl.load(DELTA + pid_b * N + offs_m, mask=m_ok, other=0.0)
            ds_t = p_t * (dp_t - delta_i[None, :])
            acc_k += tl.dot(ds_t.to(dt), tl.trans(q_t), input_precision=PREC, out_dtype=ACC)

    # grad_x = dy + gamma·Pᵀdy ; grad_pre = m·dcf + alpha·Pᵀ((1 − m)·dcf)
    x_mask = n_ok[:, None] & vx_ok[None, :]
    dy_j = tl.load(GY + pid_b * s_gyb + _pos(offs_n, W, s_gyh, s_gyw, FLAT)[:, None] + offs_v[None, :] * s_gyc,
                   mask=x_mask, other=0.0).to(ACC)
    gx = dy_j + gamma * acc_x
    tl.store(GX + pid_b * s_gxb + _pos(offs_n, W, s_gxh, s_gxw, FLAT)[:, None] + offs_v[None, :] * s_gxc,
             gx.to(GX.dtype.element_ty), mask=x_mask)
    if HAS_PRE:
        p_mask = n_ok[:, None] & vp_ok[None, :]
        mk_j = tl.load(MASK + pid_b * s_mb + _pos(offs_n, W, s_mh, s_mw, FLAT), mask=n_ok, other=0.0).to(ACC)
        dcf_j = tl.load(GCF + pid_b * s_gcb + _pos(offs_n, W, s_gch, s_gcw, FLAT)[:, None] + offs_v[None, :] * s_gcc,
                        mask=p_mask, other=0.0).to(ACC)
        gp = mk_j[:, None] * dcf_j + alpha * acc_p
        tl.store(GPRE + pid_b * s_gpb + _pos(offs_n, W, s_gph, s_gpw, FLAT)[:, None] + offs_v[None, :] * s_gpc,
                 gp.to(GPRE.dtype.element_ty), mask=p_mask)
    if FUSE_DK:
        k_mask = n_ok[:, None] & d_ok[None, :]
        acc_k += tl.load(DQBUF + pid_b * Cq * N + offs_d[None, :] * N + offs_n[:, None], mask=k_mask, other=0.0)
        gq = _scale(acc_k, sc_hi, sc_lo, IS_FP64)
        tl.store(GQ + pid_b * s_gqb + _pos(offs_n, W, s_gqh, s_gqw, FLAT)[:, None] + offs_d[None, :] * s_gqc,
                 gq.to(GQ.dtype.element_ty), mask=k_mask)


# The launchable of each tiled kernel per operand class (see TILES and _launcher).
_FWD = _launcher("fwd", _fwd_kernel, _TUNE_KEY)
_DQ = _launcher("dq", _bwd_dq_kernel, _TUNE_KEY + ["KEY_SIDE"])
_DKDV = _launcher("dkdv", _bwd_dkdv_kernel, _TUNE_KEY + ["FUSE_DK"])
_DKDV_FUSED = _launcher("dkdv_fused", _bwd_dkdv_kernel, _TUNE_KEY + ["FUSE_DK"])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _split(value: float) -> Tuple[float, float]:
    """value = hi + lo with hi exactly representable in fp32 (see ``_scale``)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def _plane_strides(t: Optional[Tensor]) -> Tuple[int, int, int, int]:
    """(batch, channel, h, w) strides of a 4-D tensor; zeros for an absent one."""
    if t is None:
        return 0, 0, 0, 0
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _flat(strides, H: int, W: int) -> Optional[int]:
    """The single stride that addresses the (H, W) plane as N positions, or None."""
    _, _, sh, sw = strides
    if W == 1:
        return sh
    if H == 1 or sh == W * sw:
        return sw
    return None


def _flatten_all(tensors, H: int, W: int):
    """Strides per tensor and whether every (H, W) plane can be addressed with one stride; if so
    the flat stride is put in the w slot (the kernels then ignore the h stride)."""
    strides = [_plane_strides(t) for t in tensors]
    flats = [_flat(s, H, W) for s, t in zip(strides, tensors) if t is not None]
    flat = all(f is not None for f in flats)
    if flat:
        strides = [(s[0], s[1], 0, _flat(s, H, W)) if t is not None else s for s, t in zip(strides, tensors)]
    return flat, strides


def _mask_strides(s):
    """(batch, h, w) strides of a one-channel tensor (mask, lse viewed as (B, 1, H, W))."""
    return s[0], s[2], s[3]


# The fused dK/dV kernel needs a query head of at least this many (padded) channels: with a
# 16-wide head (Cq ≤ 16) and a 128-wide value chunk no fp16/bf16 tile compiled without spills
# (sm_90, Triton 3.9: 60–470 B at every tile tried), while PIC's 32-wide head is clean; narrower
# heads take the separate dK launch.
FUSED_DK_MIN_BLOCK_D = 32

# The batch is the grid's y dimension, which CUDA caps at 65535 blocks.
MAX_BATCH = 65535


def _check_batch(x: Tensor) -> None:
    if x.shape[0] > MAX_BATCH:
        raise ValueError(f"short_long_attention (triton backend): batch {x.shape[0]} of `x` {tuple(x.shape)} is over "
                         f"{MAX_BATCH}, the CUDA grid's y limit the kernels launch the batch on; split the batch")


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for operands of ``dtype``.

    fp32 follows PyTorch's setting for CUDA matmuls: TF32 allowed ("high"/"medium", or
    ``fp32_precision = "tf32"``) → "tf32"; the default "highest" → "tf32x3" (3xTF32: each operand
    split into a TF32 head and a TF32 tail, three tensor-core products, ~fp32 accuracy) rather than
    "ieee", whose FMA dots at these tiles compile to 32 registers and 16–54 KB of spills on sm_90
    (benchmarks/NOTES.md, "Triton: compile check and tiles", has the accuracy it gives).
    """
    if dtype == torch.float32:
        return "tf32" if fp32_matmul_allows_tf32() else "tf32x3"
    if dtype == torch.float64:
        return "ieee"
    return "tf32"  # Triton's default; ignored for half-precision operands


def _gates(gamma: Tensor, alpha: Optional[Tensor], dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """(gamma, alpha) in the accumulator dtype of ``dtype`` features (alpha := gamma without pre),
    so the kernels see one gate type whatever the caller passed (fp32 gates next to bf16 features,
    bf16 ones from autocast). The kernels convert the gates to ACC on load either way, but the
    pointer type is part of the compiled specialisation, and ptxas allocated the two variants very
    differently (PIC's fused bf16 dK/dV tile: 192 registers with bf16 gates, 255 + 152 B of spills
    with fp32 ones): one type keeps the compile check's resource report true for every caller and
    halves the kernels to compile and cache."""
    acc = accumulator(dtype)[0]
    gamma = gamma.to(acc)
    return gamma, (alpha.to(acc) if alpha is not None else gamma)


def _blocks(q: Tensor, C: int, Cp: int, cap: int = 0) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_V, number of value chunks): powers of two ≥ 16 (tl.dot's minimum);
    BLOCK_V at most ``cap`` (default MAX_BLOCK_V)."""
    block_d = max(16, triton.next_power_of_2(q.shape[1]))
    widest = max(C, Cp)
    block_v = min(max(16, triton.next_power_of_2(widest)), min(cap or MAX_BLOCK_V, MAX_BLOCK_V))
    return block_d, block_v, triton.cdiv(widest, block_v)


def short_long_attention_fwd(
    q: Tensor,
    x: Tensor,
    gamma: Tensor,
    pre: Optional[Tensor],
    mask: Optional[Tensor],
    alpha: Optional[Tensor],
    scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward: (y, cf, sa, ca, lse); cf and ca are (0,) without ``pre`` (contract: inpaint_fast/ops/schemas.inc)."""
    check_index_range("short_long_attention", q=q, x=x, pre=pre, mask=mask)
    _check_batch(x)
    B, C, H, W = x.shape
    N = H * W
    has_pre = pre is not None
    Cp = pre.shape[1] if has_pre else 0
    acc_torch, acc_tl = accumulator(x.dtype)
    y = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    sa = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    if has_pre:
        cf = torch.empty((B, Cp, H, W), dtype=pre.dtype, device=x.device)
        ca = torch.empty((B, Cp, H, W), dtype=pre.dtype, device=x.device)
    else:
        cf = torch.empty((0,), dtype=x.dtype, device=x.device)
        ca = torch.empty((0,), dtype=x.dtype, device=x.device)
    lse = torch.empty((B, H, W), dtype=acc_torch, device=x.device)
    if B == 0 or N == 0:
        return y, cf, sa, ca, lse

    prec = _precision(x.dtype)
    cls = operand_class(x.dtype, prec)
    block_d, block_v, n_chunks = _blocks(q, C, Cp, FWD_MAX_BLOCK_V.get(cls, 0))
    lse4 = lse.unsqueeze(1)
    flat, (sq, sx, sp, sm, sy, sc, sl) = _flatten_all(
        [q, x, pre, mask, y, cf if has_pre else None, lse4], H, W)
    qk_hi, qk_lo = _split(float(scale) * _LOG2E)
    ln2_hi, ln2_lo = _split(_LN2)
    dummy = x
    gamma_, alpha_ = _gates(gamma, alpha if has_pre else None, x.dtype)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B, n_chunks)  # noqa: E731
    _FWD(cls, grid)(
        q, x, pre if has_pre else dummy, mask if has_pre else dummy, gamma_, alpha_,
        y, sa, cf if has_pre else dummy, ca if has_pre else dummy, lse,
        N, W, q.shape[1], C, Cp, qk_hi, qk_lo, ln2_hi, ln2_lo,
        *sq, *sx, *sp, *_mask_strides(sm), *sy, *sc, *_mask_strides(sl),
        HAS_PRE=has_pre, FLAT=flat, IS_FP64=x.dtype == torch.float64, ACC=acc_tl,
        PREC=prec, BLOCK_D=block_d, BLOCK_V=block_v,
    )  # fmt: skip
    return y, cf, sa, ca, lse


def short_long_attention_bwd(
    grad_y: Tensor,
    grad_cf: Tensor,
    q: Tensor,
    x: Tensor,
    gamma: Tensor,
    pre: Optional[Tensor],
    mask: Optional[Tensor],
    alpha: Optional[Tensor],
    sa: Tensor,
    ca: Tensor,
    lse: Tensor,
    scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward: (grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha); the last three are
    (0,) without ``pre`` (contract: inpaint_fast/ops/schemas.inc). Deterministic: no atomics anywhere."""
    check_index_range("short_long_attention", q=q, x=x, pre=pre, mask=mask, grad_y=grad_y,
                      grad_cf=grad_cf if pre is not None else None)
    _check_batch(x)
    B, C, H, W = x.shape
    N = H * W
    Cq = q.shape[1]
    has_pre = pre is not None
    Cp = pre.shape[1] if has_pre else 0
    acc_torch, acc_tl = accumulator(x.dtype)
    dev = x.device
    grad_q = torch.empty((B, Cq, H, W), dtype=q.dtype, device=dev)
    grad_x = torch.empty((B, C, H, W), dtype=x.dtype, device=dev)
    empty = torch.empty((0,), dtype=x.dtype, device=dev)
    if has_pre:
        grad_pre = torch.empty((B, Cp, H, W), dtype=pre.dtype, device=dev)
        grad_mask = torch.empty((B, 1, H, W), dtype=mask.dtype, device=dev)
    else:
        grad_pre = grad_mask = empty
    if B == 0 or N == 0:
        grad_gamma = torch.zeros(gamma.shape, dtype=gamma.dtype, device=dev)
        grad_alpha = torch.zeros(alpha.shape, dtype=alpha.dtype, device=dev) if has_pre else empty
        return grad_q.zero_(), grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha

    prec = _precision(x.dtype)
    cls = operand_class(x.dtype, prec)
    block_d, block_v, n_chunks = _blocks(q, C, Cp, BWD_MAX_BLOCK_V.get(cls, 0))
    fuse_dk = _fuses_dk(n_chunks, cls, block_d)
    gcf = grad_cf if has_pre else None
    flat, (sq, sx, sp, sm, sgy, sgc, ssa, sca, sl, sgq, sgx, sgp) = _flatten_all(
        [q, x, pre, mask, grad_y, gcf, sa, ca if has_pre else None, lse.unsqueeze(1), grad_q, grad_x,
         grad_pre if has_pre else None], H, W)  # fmt: skip
    is_fp64 = x.dtype == torch.float64
    qk_hi, qk_lo = _split(float(scale) * _LOG2E)
    l2e_hi, l2e_lo = _split(_LOG2E)
    sc_hi, sc_lo = _split(float(scale))
    dummy = x
    pre_ = pre if has_pre else dummy
    mask_ = mask if has_pre else dummy
    gamma_, alpha_ = _gates(gamma, alpha if has_pre else None, x.dtype)
    gcf_ = grad_cf if has_pre else dummy

    # 1) δ (both streams), grad_mask, partial sums of grad_gamma / grad_alpha.
    n_pre_blocks = triton.cdiv(N, _PRE_BLOCK)
    delta = torch.empty((B, N), dtype=acc_torch, device=dev)
    part_g = torch.empty((B, n_pre_blocks), dtype=acc_torch, device=dev)
    part_a = torch.empty((B, n_pre_blocks), dtype=acc_torch, device=dev) if has_pre else part_g
    _bwd_preprocess_kernel[(n_pre_blocks, B)](
        grad_y, gcf_, sa, ca if has_pre else dummy, pre_, mask_, gamma_, alpha_,
        delta, grad_mask if has_pre else dummy, part_g, part_a,
        N, W, C, Cp, n_pre_blocks,
        *sgy, *ssa, *sgc, *sca, *sp, *_mask_strides(sm),
        HAS_PRE=has_pre, FLAT=flat, ACC=acc_tl, BLOCK_M=_PRE_BLOCK, BLOCK_V=min(block_v, PRE_TILE[0]),
        num_warps=PRE_TILE[1],
    )  # fmt: skip
    grad_gamma = part_g.sum().reshape(gamma.shape).to(gamma.dtype)
    grad_alpha = part_a.sum().reshape(alpha.shape).to(alpha.dtype) if has_pre else empty

    common = dict(HAS_PRE=has_pre, FLAT=flat, IS_FP64=is_fp64, ACC=acc_tl, PREC=prec,
                  BLOCK_D=block_d, BLOCK_V=block_v)
    scalars = (N, W, Cq, C, Cp, qk_hi, qk_lo, l2e_hi, l2e_lo, sc_hi, sc_lo)
    dq_buf = torch.empty((B, Cq, N), dtype=acc_torch, device=dev)
    grid_a = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B)  # noqa: E731

    # 2) The dQ half: Σ_j dS_ij q_j into dq_buf.
    _DQ(cls, grid_a)(
        q, grad_y, x, gcf_, pre_, mask_, gamma_, alpha_, lse, delta, dq_buf, grad_q,
        *scalars, *sq, *sgy, *sx, *sgc, *sp, *_mask_strides(sm), *_mask_strides(sl), *sgq,
        KEY_SIDE=False, **common,
    )  # fmt: skip

    # 3) grad_x, grad_pre; with one value chunk also the dK half and grad_q.
    grid_n = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B, n_chunks)  # noqa: E731
    (_DKDV_FUSED if fuse_dk else _DKDV)(cls, grid_n)(
        q, x, pre_, grad_y, gcf_, mask_, gamma_, alpha_, lse, delta, dq_buf,
        grad_q, grad_x, grad_pre if has_pre else dummy,
        *scalars, *sq, *sx, *sp, *sgy, *sgc, *_mask_strides(sm), *_mask_strides(sl), *sgq, *sgx, *sgp,
        FUSE_DK=fuse_dk, **common,
    )  # fmt: skip

    # 4) Channels wider than one chunk: the dK half (Σ_i dS_ij q_i) on its own, then grad_q.
    if not fuse_dk:
        _DQ(cls, grid_a)(
            q, x, grad_y, pre_, gcf_, mask_, gamma_, alpha_, lse, delta, dq_buf, grad_q,
            *scalars, *sq, *sx, *sgy, *sp, *sgc, *_mask_strides(sm), *_mask_strides(sl), *sgq,
            KEY_SIDE=True, **common,
        )  # fmt: skip
    return grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha
