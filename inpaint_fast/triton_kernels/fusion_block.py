"""fusion_block in Triton: DFNet's fusion block, forward and backward, BatchNorm train and eval.

Launchers with the compiled ops' contract (inpaint_fast/ops/schemas.inc; params: FusionBlockParams):

    fusion_block_fwd(feat, image, *params, training, eps) -> (out, alpha, raw, bn1_mean, bn1_var, bn2_mean, bn2_var)
    fusion_block_bwd(grad_out, grad_alpha, grad_raw, feat, image, *params_with_bn_stats, training, eps)
        -> (grad_feat, grad_image_resized, grad_map_weight, ..., grad_conv3_bias)

Math per pixel (A = c_alpha ∈ {1, 3}, Cm = conv1's channels, LeakyReLU slope 0.2):
    Xk = bilinear(image → h×w, align_corners=False)     R = sigmoid(Wm·F + bm)
    a1 = lrelu(BN1(W1·[Xk, R] + b1))  (Cm)              z2 = conv3x3(a1, W2, pad 1) + b2  (A)
    α  = sigmoid(W3·lrelu(BN2(z2)) + b3)                Y  = α·R + (1 − α)·Xk   (α broadcast if A = 1)

Layout. A program owns a 2-D pixel tile of one image, flattened to BLOCK lanes (1-D grid over
batch × tile rows × tile columns). NCHW inputs are read through their strides. Cm-channel
tensors are (Cm, BLOCK): one pixel per thread, channel sums in-thread. Everything accumulates in
fp32 (fp64 for fp64 inputs); half inputs are converted on load. The Cm-channel activation a1 is
never stored: the 3×3 conv recomputes it per tap from the 6 inputs [Xk, R] of the neighbour pixel
(6·Cm MACs, with BN1 folded into conv1). Reductions (BN statistics, weight gradients) are
per-program partial rows reduced afterwards by torch in a fixed order (deterministic, no float
atomics); BN statistics combine per-tile (count, mean, M2) with Chan's formula in fp64.

Kernels and passes:

* Eval forward, ONE launch (``_fwd_kernel``, FUSED): a GH×GW lane grid = output tile + one-pixel
  halo. The program computes [Xk, R] for all its lanes (its one pass over F, halo included),
  parks them in its own scratch slice (6·GH·GW values, cache-resident), ``tl.debug_barrier()``,
  then runs the 3×3 taps from that slice, BN2 (running stats), LeakyReLU, conv3, sigmoid and the
  blend, and writes Y, α, R.
* Training forward, three launches (the batch statistics allow no fewer):
    1. ``_map_kernel``: [Xk, R] into a (B, 6, h, w) workspace — the one pass over F — R out,
       per-tile stats of z1 → BN1 batch statistics;
    2. ``_fwd_kernel`` (STATS): the 3×3 conv from the workspace → per-tile stats of z2 → BN2's;
    3. ``_fwd_kernel``: the 3×3 conv again, BN2, conv3, sigmoid, blend → Y, α.
  ``fused=False`` runs eval as launches 1 and 3 (a debugging fallback, tested alike).
* Backward (only the inputs and the statistics are given; forward values are recomputed):
    1. ``_map_kernel``: [Xk, R] into the workspace (pass 1 over F);
    2. ``_bwd_alpha_kernel``: z2, α, dα_tot = gα + gY·(R − Xk), dz3 = dα_tot·α(1 − α),
       db2 = W3ᵀdz3·lrelu'; stores (db2, n2, α) per pixel and partial sums for conv3 and BN2
       (Σdb2 and Σdb2·n2 are also BN2's training backward);
    3. ``_bwd_a1_kernel`` (training only): da1 = Σ_taps W2ᵀ·dz2(q − offset), dz2 rebuilt from
       (db2, n2) and BN2's sums; db1 = da1·lrelu' → Σdb1, Σdb1·n1 (BN1's training backward);
    4. ``_bwd_a1_kernel`` (FINAL): the same, then dz1 and the conv1, conv2 (a1 at q paired with
       dz2 at q − offset: no halo) and BN1 partials, d[Xk, R] = W1ᵀdz1, grad_image_resized =
       gY(1 − α) + dXk, dR' = (gR + gY·α + dR)·R(1 − R), and pass 2 over F: grad_feat = Wmᵀ·dR'
       and the grad_map_weight partials. Each program walks several tiles and accumulates one
       partial row, so the (9·A·Cm-wide) partial rows stay few.

Tile sizes are fixed, not autotuned and not yet tuned on a GPU (chosen from compiled register
counts for sm_90: no spills in fp32); small under ``TRITON_INTERPRET=1`` so CI stays fast.
"""

from __future__ import annotations

import contextlib
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import check_index_range, interpreter_mode
from ..fusion_block_params import PARAM_NAMES, TRAINABLE, FusionBlockParams
from ._dtypes import accumulator
from .fusion_block_host import combine_stats, fold_bn1, invstd, pack_w1, w2_taps

__all__ = ["fusion_block_fwd", "fusion_block_bwd"]

_INTERPRET = interpreter_mode()

# Pixel tile (rows × cols) of the halo-free kernels; lane grid of the fused eval kernel (its
# output tile is (GH − 2) × (GW − 2)); feature-channel chunk of the c → 3 map conv.
# The a1-level backward kernel has its own (smaller) tile: it holds the most Cm-vectors.
if _INTERPRET:
    _TILE, _GRID, _TILE_A1, _CHUNK = (8, 8), (8, 16), (8, 8), 32
    _WARPS = _WARPS_A1 = 4
else:
    _TILE, _GRID, _TILE_A1, _CHUNK = (16, 16), (16, 16), (8, 8), 32
    _WARPS = _WARPS_A1 = 8
# Under the interpreter few programs (several tiles each) keep the partial-row accumulation tested.
_INTERPRET_PROGRAMS = 3
# On a GPU: programs per multiprocessor of the a1-level backward.
_PROGRAMS_PER_SM = 4


# ---------------------------------------------------------------------------------------------
# Kernel helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _ld(ptr, mask, CT: tl.constexpr):
    return tl.load(ptr, mask=mask, other=0.0).to(CT)


@triton.jit
def _lds(ptr, CT: tl.constexpr):
    return tl.load(ptr).to(CT)


@triton.jit
def _ld3(p, s_c, ok, CT: tl.constexpr):
    """Three channels at p, p + s_c, p + 2·s_c (0 where not ok)."""
    return _ld(p, ok, CT), _ld(p + s_c, ok, CT), _ld(p + 2 * s_c, ok, CT)


@triton.jit
def _st3(p, s_c, v0, v1, v2, ok):
    tl.store(p, v0, mask=ok)
    tl.store(p + s_c, v1, mask=ok)
    tl.store(p + 2 * s_c, v2, mask=ok)


@triton.jit
def _ld6(p, s_c, ok, CT: tl.constexpr):
    """The six inputs [Xk, R] of the blend block at p + c·s_c (0 where not ok)."""
    x0, x1, x2 = _ld3(p, s_c, ok, CT)
    r0, r1, r2 = _ld3(p + 3 * s_c, s_c, ok, CT)
    return x0, x1, x2, r0, r1, r2


@triton.jit
def _st6(p, s_c, x0, x1, x2, r0, r1, r2, ok):
    _st3(p, s_c, x0, x1, x2, ok)
    _st3(p + 3 * s_c, s_c, r0, r1, r2, ok)


@triton.jit
def _col(ptr, idx, mask, CT: tl.constexpr):
    """A vector along dim 0 of a (channels, pixels) tile: ptr[idx] as (n, 1)."""
    return tl.load(ptr + idx, mask=mask, other=0.0).to(CT)[:, None]


@triton.jit
def _acc(ptr, v, mask=None):
    """ptr += v: a program's read-add-write of its own partial row."""
    tl.store(ptr, tl.load(ptr, mask=mask) + v, mask=mask)


@triton.jit
def _dz2(q, hw, A: tl.constexpr, a: tl.constexpr, k2, m2a, m2b, ok, CT: tl.constexpr):
    """BN2 backward, channel a, from ws2's (db2, n2) at `q`: k·(db2 − m_a − n2·m_b); 0 where not ok."""
    db = tl.load(q + a * hw, mask=ok, other=0.0)
    n = tl.load(q + (A + a) * hw, mask=ok, other=0.0)
    return tl.where(ok, _lds(k2 + a, CT) * (db - _lds(m2a + a, CT) - n * _lds(m2b + a, CT)), 0.0)


@triton.jit
def _lrelu(y):
    return tl.where(y > 0, y, y * 0.2)


@triton.jit
def _lrelu_grad(y, g):
    """g · lrelu'(y)."""
    return tl.where(y > 0, g, g * 0.2)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _sigmoid_pair(s):
    """(σ(s), 1 − σ(s)), each to full relative precision (one exp): 1 − α is not formed by
    cancellation, which matters for α(1 − α) and (1 − α)·Xk when α saturates."""
    e = tl.exp(-tl.abs(s))
    p = 1.0 / (1.0 + e)
    q = e * p
    return tl.where(s >= 0, p, q), tl.where(s >= 0, q, p)


@triton.jit
def _src_index(dst, in_size, out_size, CT: tl.constexpr):
    """PyTorch's bilinear source index (align_corners=False): i0, i1 and weights l0, l1."""
    d = dst.to(CT)
    zero = d * 0
    scale = (zero + in_size) / (zero + out_size)
    src = tl.maximum(scale * (d + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)
    l1 = tl.minimum(tl.maximum(src - i0.to(CT), 0.0), 1.0)
    i1 = tl.minimum(i0 + 1, in_size - 1)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _bilerp(p, o00, o01, o10, o11, ly0, ly1, lx0, lx1, ok, CT: tl.constexpr):
    v00 = _ld(p + o00, ok, CT)
    v01 = _ld(p + o01, ok, CT)
    v10 = _ld(p + o10, ok, CT)
    v11 = _ld(p + o11, ok, CT)
    return ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)


@triton.jit
def _resize_at(img_b, s_ic, s_ih, s_iw, py, px, ok, H, W, h, w, CT: tl.constexpr):
    """Xk (3 channels) at pixels (py, px) of the h×w grid, from the H×W image of one batch item."""
    y0, y1, ly0, ly1 = _src_index(py, H, h, CT)
    x0, x1, lx0, lx1 = _src_index(px, W, w, CT)
    o00 = y0 * s_ih + x0 * s_iw
    o01 = y0 * s_ih + x1 * s_iw
    o10 = y1 * s_ih + x0 * s_iw
    o11 = y1 * s_ih + x1 * s_iw
    v0 = _bilerp(img_b, o00, o01, o10, o11, ly0, ly1, lx0, lx1, ok, CT)
    v1 = _bilerp(img_b + s_ic, o00, o01, o10, o11, ly0, ly1, lx0, lx1, ok, CT)
    v2 = _bilerp(img_b + 2 * s_ic, o00, o01, o10, o11, ly0, ly1, lx0, lx1, ok, CT)
    return v0, v1, v2


@triton.jit
def _map_conv(feat_b, s_fc, pix, ok, map_w, map_b, C, BLOCK: tl.constexpr, CC: tl.constexpr, CT: tl.constexpr):
    """R = sigmoid(Wm·F + bm) at BLOCK pixels (element offsets `pix`), F read in CC-channel chunks."""
    acc0 = tl.zeros([BLOCK], CT)
    acc1 = tl.zeros([BLOCK], CT)
    acc2 = tl.zeros([BLOCK], CT)
    for c0 in range(0, C, CC):
        cc = c0 + tl.arange(0, CC)
        cmask = cc < C
        f = tl.load(feat_b + pix[None, :] + cc[:, None] * s_fc, mask=ok[None, :] & cmask[:, None], other=0.0)
        f = f.to(CT)
        acc0 += tl.sum(f * _ld(map_w + cc, cmask, CT)[:, None], axis=0)
        acc1 += tl.sum(f * _ld(map_w + C + cc, cmask, CT)[:, None], axis=0)
        acc2 += tl.sum(f * _ld(map_w + 2 * C + cc, cmask, CT)[:, None], axis=0)
    r0 = _sigmoid(acc0 + _lds(map_b, CT))
    r1 = _sigmoid(acc1 + _lds(map_b + 1, CT))
    r2 = _sigmoid(acc2 + _lds(map_b + 2, CT))
    return r0, r1, r2


@triton.jit
def _w1_cols(w1p, cm, cmm, CM, CT: tl.constexpr):
    """Bias and the 6 input columns of W1 as (CMP, 1) columns, from a packed (7, Cm) block:
    rows 0-5 = W1ᵀ, row 6 = bias."""
    c0 = tl.load(w1p + cm, mask=cmm, other=0.0).to(CT)[:, None]
    c1 = tl.load(w1p + CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    c2 = tl.load(w1p + 2 * CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    c3 = tl.load(w1p + 3 * CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    c4 = tl.load(w1p + 4 * CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    c5 = tl.load(w1p + 5 * CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    bias = tl.load(w1p + 6 * CM + cm, mask=cmm, other=0.0).to(CT)[:, None]
    return bias, c0, c1, c2, c3, c4, c5


@triton.jit
def _z1(x0, x1, x2, r0, r1, r2, bias, c0, c1, c2, c3, c4, c5):
    """z1 = W1·[Xk, R] + b1: (BLOCK, CMP)."""
    z = bias + x0[None, :] * c0 + x1[None, :] * c1 + x2[None, :] * c2
    return z + r0[None, :] * c3 + r1[None, :] * c4 + r2[None, :] * c5


@triton.jit
def _conv2_taps(src, s_c, s_y, s_x, sy, sx, py, px, active, h, w, w1p, w2, CM,
                A: tl.constexpr, BLOCK: tl.constexpr, CMP: tl.constexpr, CT: tl.constexpr):  # fmt: skip
    """conv3x3(a1, W2), without bias, at pixels (py, px): (acc0, acc1, acc2); channels ≥ A unused.

    The 6 inputs [Xk, R] of neighbour (py + dy, px + dx) are read at
    src + c·s_c + (sy + dy)·s_y + (sx + dx)·s_x and its Cm-channel a1 = lrelu(W1f·[Xk, R] + b1f)
    is recomputed from them (W1f, b1f: conv1 with BN1 folded in, packed twice in w1p, see
    fusion_block_host.pack_w1; a1 = 0 off the image, the conv's zero padding).
    """
    cm = tl.arange(0, CMP)
    cmm = cm < CM
    acc0 = tl.zeros([BLOCK], CT)
    acc1 = tl.zeros([BLOCK], CT)
    acc2 = tl.zeros([BLOCK], CT)
    for t in range(9):  # a runtime loop: unrolled, the 9 taps' loads would all be hoisted
        dy = t // 3 - 1
        dx = t % 3 - 1
        ny = py + dy
        nx = px + dx
        ok = active & (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        x0, x1, x2, r0, r1, r2 = _ld6(src + (sy + dy) * s_y + (sx + dx) * s_x, s_c, ok, CT)
        # One pixel per thread: a Cm-vector held across the loop costs Cm registers in every
        # thread, so the uniform weights are re-read per tap (L1 hits) from alternating copies,
        # which keeps the compiler from hoisting them out of the loop.
        bias, wc0, wc1, wc2, wc3, wc4, wc5 = _w1_cols(w1p + (t % 2) * (7 * CM), cm, cmm, CM, CT)
        a1 = tl.where(ok[None, :], _lrelu(_z1(x0, x1, x2, r0, r1, r2, bias, wc0, wc1, wc2, wc3, wc4, wc5)), 0.0)
        acc0 += tl.sum(a1 * tl.load(w2 + t * CM + cm, mask=cmm, other=0.0).to(CT)[:, None], axis=0)
        if A == 3:
            acc1 += tl.sum(a1 * tl.load(w2 + (9 + t) * CM + cm, mask=cmm, other=0.0).to(CT)[:, None], axis=0)
            acc2 += tl.sum(a1 * tl.load(w2 + (18 + t) * CM + cm, mask=cmm, other=0.0).to(CT)[:, None], axis=0)
    return acc0, acc1, acc2


@triton.jit
def _bn2_ch(z, a: tl.constexpr, b2, mu2, is2, g2, be2, CT: tl.constexpr):
    """Channel a of BN2: z2 = conv + b2, n2 = (z2 − μ2)·invstd2, y2 = γ2·n2 + β2."""
    zz = z + _lds(b2 + a, CT)
    n = (zz - _lds(mu2 + a, CT)) * _lds(is2 + a, CT)
    y = n * _lds(g2 + a, CT) + _lds(be2 + a, CT)
    return zz, n, y


@triton.jit
def _bn2_lrelu(c0, c1, c2, b2, mu2, is2, g2, be2, A: tl.constexpr, CT: tl.constexpr):
    """BN2 and LeakyReLU of the three conv2 accumulators: per channel z2 (= conv + b2), n2, y2 and
    v2 = lrelu(y2). For A = 1 the unused channels 1, 2 repeat channel 0's parameters."""
    zz0, n0, y0 = _bn2_ch(c0, 0, b2, mu2, is2, g2, be2, CT)
    zz1, n1, y1 = _bn2_ch(c1, 1 * (A // 3), b2, mu2, is2, g2, be2, CT)
    zz2, n2, y2 = _bn2_ch(c2, 2 * (A // 3), b2, mu2, is2, g2, be2, CT)
    return zz0, zz1, zz2, n0, n1, n2, y0, y1, y2, _lrelu(y0), _lrelu(y1), _lrelu(y2)


@triton.jit
def _conv3_row(v0, v1, v2, w3, b3, a: tl.constexpr, A: tl.constexpr, CT: tl.constexpr):
    """Row a of the A×A 1×1 conv: b3[a] + Σ_b W3[a, b]·v_b."""
    s = _lds(b3 + a, CT) + v0 * _lds(w3 + a * A, CT)
    if A == 3:
        s = s + v1 * _lds(w3 + a * A + 1, CT) + v2 * _lds(w3 + a * A + 2, CT)
    return s


@triton.jit
def _alpha(v0, v1, v2, w3, b3, A: tl.constexpr, CT: tl.constexpr):
    """α = σ(s), s = conv3(v2), per colour: (s, α, 1 − α) × 3. For A = 1 one α serves all
    three colours (channels 1, 2 repeat channel 0)."""
    s0 = _conv3_row(v0, v1, v2, w3, b3, 0, A, CT)
    al0, om0 = _sigmoid_pair(s0)
    if A == 3:
        s1 = _conv3_row(v0, v1, v2, w3, b3, 1, A, CT)
        s2 = _conv3_row(v0, v1, v2, w3, b3, 2, A, CT)
        al1, om1 = _sigmoid_pair(s1)
        al2, om2 = _sigmoid_pair(s2)
    else:
        s1, al1, om1 = s0, al0, om0
        s2, al2, om2 = s0, al0, om0
    return s0, s1, s2, al0, al1, al2, om0, om1, om2


@triton.jit
def _tile_stats(v, active, cnt):
    """Mean and M2 (sum of squared deviations) of v over the active lanes."""
    m = tl.sum(tl.where(active, v, 0.0), axis=0) / cnt
    d = tl.where(active, v - m, 0.0)
    return m, tl.sum(d * d, axis=0)


@triton.jit
def _tile(tile, n_ty, n_tx, TH: tl.constexpr, TW: tl.constexpr, HALO: tl.constexpr):
    """Tile index → (batch, lane, lane row/col in the TH×TW lane grid, pixel row/col).

    Tiles are numbered batch-major, then row-major; with HALO = 1 the lane grid is the output
    tile plus a one-pixel ring, so consecutive tiles advance by TH − 2 rows / TW − 2 columns.
    """
    tiles = n_ty * n_tx
    b = tile // tiles
    rem = tile % tiles
    lane = tl.arange(0, TH * TW)
    i = lane // TW
    j = lane % TW
    py = (rem // n_tx) * (TH - 2 * HALO) - HALO + i
    px = (rem % n_tx) * (TW - 2 * HALO) - HALO + j
    return b.to(tl.int64), lane, i, j, py, px


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
# Size and count arguments are not specialised on their value (Triton would otherwise compile one
# binary per pattern of "equals 1" / "divisible by 16" among them: ~5x the variants across DFNet's
# levels). One pixel per thread makes every load a scalar one, so the divisibility facts buy no
# vectorisation; strides stay specialised (a unit stride folds away).
_SIZES = ("C", "H", "W", "h", "w", "CM", "n_ty", "n_tx", "n_tiles", "tpp")


@triton.jit(do_not_specialize=_SIZES)
def _map_kernel(
    feat, s_fb, s_fc, s_fh, s_fw,
    img, s_ib, s_ic, s_ih, s_iw,
    in_ws, raw_out, part, map_w, map_b, w1p,
    C, H, W, h, w, CM, n_ty, n_tx,
    STATS: tl.constexpr, STORE_R: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    CMP: tl.constexpr, CC: tl.constexpr, CT: tl.constexpr,
):  # fmt: skip
    """[Xk, R] of one pixel tile into the (B, 6, h, w) workspace — the one pass over F — and R
    into `raw_out` (STORE_R); with STATS also the tile's (count, mean, M2) of z1."""
    pid = tl.program_id(0)
    b, lane, i, j, py, px = _tile(pid, n_ty, n_tx, TH, TW, 0)
    active = (py < h) & (px < w)
    x0, x1, x2 = _resize_at(img + b * s_ib, s_ic, s_ih, s_iw, py, px, active, H, W, h, w, CT)
    r0, r1, r2 = _map_conv(feat + b * s_fb, s_fc, py * s_fh + px * s_fw, active, map_w, map_b, C, TH * TW, CC, CT)
    hw = h * w
    pix = py * w + px
    _st6(in_ws + b * (6 * hw) + pix, hw, x0, x1, x2, r0, r1, r2, active)
    if STORE_R:
        _st3(raw_out + b * (3 * hw) + pix, hw, r0, r1, r2, active)
    if STATS:
        cm = tl.arange(0, CMP)
        bias, wc0, wc1, wc2, wc3, wc4, wc5 = _w1_cols(w1p, cm, cm < CM, CM, CT)
        z = _z1(x0, x1, x2, r0, r1, r2, bias, wc0, wc1, wc2, wc3, wc4, wc5)
        cnt = tl.sum(active.to(CT), axis=0)
        mean = tl.sum(tl.where(active[None, :], z, 0.0), axis=1) / cnt
        d = tl.where(active[None, :], z - mean[:, None], 0.0)
        pp = part + pid * (1 + 2 * CMP)
        tl.store(pp, cnt)
        tl.store(pp + 1 + cm, mean)
        tl.store(pp + 1 + CMP + cm, tl.sum(d * d, axis=1))


@triton.jit(do_not_specialize=_SIZES)
def _fwd_kernel(
    feat, s_fb, s_fc, s_fh, s_fw,
    img, s_ib, s_ic, s_ih, s_iw,
    in_ws, scratch, raw_out, out, alpha, part,
    map_w, map_b, w1p, w2, b2, mu2, is2, g2, be2, w3, b3,
    C, H, W, h, w, CM, n_ty, n_tx,
    A: tl.constexpr, FUSED: tl.constexpr, STATS: tl.constexpr, HALO: tl.constexpr,
    GH: tl.constexpr, GW: tl.constexpr, CMP: tl.constexpr, CC: tl.constexpr, CT: tl.constexpr,
):  # fmt: skip
    """Blend-block forward of one tile: the 3×3 conv (a1 recomputed per tap), BN2, conv3, blend.

    FUSED (eval, HALO = 1): [Xk, R] come from the image and F in this program, over a GH×GW lane
    grid = output tile + 1-pixel halo, and go through the program's scratch slice to the taps;
    R is stored too. Otherwise (HALO = 0) [Xk, R] are read from `in_ws` (_map_kernel's).
    STATS: instead of outputs, the tile's (count, mean, M2) of z2.
    """
    BLOCK: tl.constexpr = GH * GW
    pid = tl.program_id(0)
    b, lane, i, j, py, px = _tile(pid, n_ty, n_tx, GH, GW, HALO)
    inimg = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    active = inimg & (i >= HALO) & (i < GH - HALO) & (j >= HALO) & (j < GW - HALO)
    hw = h * w
    pix = py * w + px
    if FUSED:
        x0, x1, x2 = _resize_at(img + b * s_ib, s_ic, s_ih, s_iw, py, px, inimg, H, W, h, w, CT)
        r0, r1, r2 = _map_conv(feat + b * s_fb, s_fc, py * s_fh + px * s_fw, inimg, map_w, map_b, C, BLOCK, CC, CT)
        src = scratch + pid.to(tl.int64) * (6 * BLOCK)
        _st6(src + lane, BLOCK, x0, x1, x2, r0, r1, r2, None)
        tl.debug_barrier()  # the taps read what other threads of this program just wrote
        c0, c1, c2 = _conv2_taps(src + lane, BLOCK, GW, 1, 0, 0, py, px, active, h, w,
                                 w1p, w2, CM, A, BLOCK, CMP, CT)  # fmt: skip
    else:
        src = in_ws + b * (6 * hw) + pix
        x0, x1, x2, r0, r1, r2 = _ld6(src, hw, active, CT)
        c0, c1, c2 = _conv2_taps(src, hw, w, 1, 0, 0, py, px, active, h, w,
                                 w1p, w2, CM, A, BLOCK, CMP, CT)  # fmt: skip
    zz0, zz1, zz2, n0, n1, n2, y0, y1, y2, v0, v1, v2 = _bn2_lrelu(c0, c1, c2, b2, mu2, is2, g2, be2, A, CT)
    if STATS:
        cnt = tl.sum(active.to(CT), axis=0)
        pp = part + pid * (1 + 2 * A)
        tl.store(pp, cnt)
        m, m2 = _tile_stats(zz0, active, cnt)
        tl.store(pp + 1, m)
        tl.store(pp + 1 + A, m2)
        if A == 3:
            m, m2 = _tile_stats(zz1, active, cnt)
            tl.store(pp + 2, m)
            tl.store(pp + 5, m2)
            m, m2 = _tile_stats(zz2, active, cnt)
            tl.store(pp + 3, m)
            tl.store(pp + 6, m2)
    else:
        _s0, _s1, _s2, al0, al1, al2, om0, om1, om2 = _alpha(v0, v1, v2, w3, b3, A, CT)
        ab = alpha + b * (A * hw) + pix
        if A == 3:
            _st3(ab, hw, al0, al1, al2, active)
        else:
            tl.store(ab, al0, mask=active)
        _st3(out + b * (3 * hw) + pix, hw, al0 * r0 + om0 * x0, al1 * r1 + om1 * x1, al2 * r2 + om2 * x2, active)
        if FUSED:
            _st3(raw_out + b * (3 * hw) + pix, hw, r0, r1, r2, active)


@triton.jit(do_not_specialize=_SIZES)
def _bwd_alpha_kernel(
    in_ws, gy, s_gb, s_gc, s_gh, s_gw, ga, s_ab, s_ac, s_ah, s_aw, ws2, part,
    w1p, w2, b2, mu2, is2, g2, be2, w3, b3,
    h, w, CM, n_ty, n_tx,
    A: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CMP: tl.constexpr, CT: tl.constexpr,
):  # fmt: skip
    """Backward through blend, sigmoid, conv3 and LeakyReLU down to db2 (grad of BN2's output).

    Stores ws2[b] = (db2 (A), n2 (A), s (A): α = σ(s)) per pixel, and per tile the partial sums
    Σdz3 (A), Σdz3_a·a2_b (A·A), Σdb2 (A), Σdb2·n2 (A), Σn2 (A).
    """
    BLOCK: tl.constexpr = TH * TW
    pid = tl.program_id(0)
    b, lane, i, j, py, px = _tile(pid, n_ty, n_tx, TH, TW, 0)
    active = (py < h) & (px < w)
    hw = h * w
    pix = py * w + px
    src = in_ws + b * (6 * hw) + pix
    x0, x1, x2, r0, r1, r2 = _ld6(src, hw, active, CT)
    c0, c1, c2 = _conv2_taps(src, hw, w, 1, 0, 0, py, px, active, h, w,
                             w1p, w2, CM, A, BLOCK, CMP, CT)  # fmt: skip
    zz0, zz1, zz2, n0, n1, n2, y0, y1, y2, v0, v1, v2 = _bn2_lrelu(c0, c1, c2, b2, mu2, is2, g2, be2, A, CT)
    gy0, gy1, gy2 = _ld3(gy + b * s_gb + py * s_gh + px * s_gw, s_gc, active, CT)
    gab = ga + b * s_ab + py * s_ah + px * s_aw
    s0, s1, s2, al0, al1, al2, om0, om1, om2 = _alpha(v0, v1, v2, w3, b3, A, CT)  # conv3 output: α = σ(s)
    wsb = ws2 + b * (3 * A * hw) + pix
    pp = part + pid * (A * A + 4 * A)
    if A == 3:
        # dα_tot = gα + gY·(R − Xk);  dz3 = dα_tot·α(1 − α)
        d0 = tl.load(gab, mask=active, other=0.0).to(CT) + gy0 * (r0 - x0)
        d1 = tl.load(gab + s_ac, mask=active, other=0.0).to(CT) + gy1 * (r1 - x1)
        d2 = tl.load(gab + 2 * s_ac, mask=active, other=0.0).to(CT) + gy2 * (r2 - x2)
        dz0 = tl.where(active, d0 * al0 * om0, 0.0)
        dz1 = tl.where(active, d1 * al1 * om1, 0.0)
        dz2 = tl.where(active, d2 * al2 * om2, 0.0)
        # da2_b = Σ_a W3[a, b]·dz3_a;  db2 = da2·lrelu'(y2)
        db0 = _lrelu_grad(y0, dz0 * _lds(w3, CT) + dz1 * _lds(w3 + 3, CT) + dz2 * _lds(w3 + 6, CT))
        db1 = _lrelu_grad(y1, dz0 * _lds(w3 + 1, CT) + dz1 * _lds(w3 + 4, CT) + dz2 * _lds(w3 + 7, CT))
        db2 = _lrelu_grad(y2, dz0 * _lds(w3 + 2, CT) + dz1 * _lds(w3 + 5, CT) + dz2 * _lds(w3 + 8, CT))
        _st3(wsb, hw, db0, db1, db2, active)
        _st3(wsb + 3 * hw, hw, n0, n1, n2, active)
        _st3(wsb + 6 * hw, hw, s0, s1, s2, active)
        tl.store(pp + 0, tl.sum(dz0, axis=0))
        tl.store(pp + 1, tl.sum(dz1, axis=0))
        tl.store(pp + 2, tl.sum(dz2, axis=0))
        tl.store(pp + 3, tl.sum(dz0 * v0, axis=0))
        tl.store(pp + 4, tl.sum(dz0 * v1, axis=0))
        tl.store(pp + 5, tl.sum(dz0 * v2, axis=0))
        tl.store(pp + 6, tl.sum(dz1 * v0, axis=0))
        tl.store(pp + 7, tl.sum(dz1 * v1, axis=0))
        tl.store(pp + 8, tl.sum(dz1 * v2, axis=0))
        tl.store(pp + 9, tl.sum(dz2 * v0, axis=0))
        tl.store(pp + 10, tl.sum(dz2 * v1, axis=0))
        tl.store(pp + 11, tl.sum(dz2 * v2, axis=0))
        tl.store(pp + 12, tl.sum(db0, axis=0))
        tl.store(pp + 13, tl.sum(db1, axis=0))
        tl.store(pp + 14, tl.sum(db2, axis=0))
        tl.store(pp + 15, tl.sum(db0 * n0, axis=0))
        tl.store(pp + 16, tl.sum(db1 * n1, axis=0))
        tl.store(pp + 17, tl.sum(db2 * n2, axis=0))
        tl.store(pp + 18, tl.sum(tl.where(active, n0, 0.0), axis=0))
        tl.store(pp + 19, tl.sum(tl.where(active, n1, 0.0), axis=0))
        tl.store(pp + 20, tl.sum(tl.where(active, n2, 0.0), axis=0))
    else:
        # one alpha for the three colours: dα_tot sums over them
        d0 = tl.load(gab, mask=active, other=0.0).to(CT) + (gy0 * (r0 - x0) + gy1 * (r1 - x1) + gy2 * (r2 - x2))
        dz0 = tl.where(active, d0 * al0 * om0, 0.0)
        db0 = _lrelu_grad(y0, dz0 * _lds(w3, CT))
        tl.store(wsb, db0, mask=active)
        tl.store(wsb + hw, n0, mask=active)
        tl.store(wsb + 2 * hw, s0, mask=active)
        tl.store(pp + 0, tl.sum(dz0, axis=0))
        tl.store(pp + 1, tl.sum(dz0 * v0, axis=0))
        tl.store(pp + 2, tl.sum(db0, axis=0))
        tl.store(pp + 3, tl.sum(db0 * n0, axis=0))
        tl.store(pp + 4, tl.sum(tl.where(active, n0, 0.0), axis=0))


@triton.jit(do_not_specialize=_SIZES)
def _bwd_a1_kernel(
    feat, s_fb, s_fc, s_fh, s_fw,
    in_ws, gy, s_gb, s_gc, s_gh, s_gw, gr, s_rb, s_rc, s_rh, s_rw,
    ws2, gfeat, gxk, part, part_map,
    map_w, w1p, mu1, is1, g1, be1, k1, m1a, m1b, w2, k2, m2a, m2b,
    C, h, w, CM, n_ty, n_tx, n_tiles, tpp,
    A: tl.constexpr, FINAL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    CMP: tl.constexpr, CC: tl.constexpr, CT: tl.constexpr,
):  # fmt: skip
    """Backward from dz2 down to a1, z1, [Xk, R] and F for one pixel tile.

    dz2 = k2·(db2 − m2a − n2·m2b) from ws2 (BN2 backward; m = 0 in eval); da1(q) =
    Σ_taps Σ_a W2[a, :, t]·dz2_a(q − off_t); db1 = da1·lrelu'(y1). Partials, at fixed offsets
    (CMP-wide segments): [Σdb1 | Σdb1·n1] and, when FINAL, [Σn1 | dW1 (6 segments) |
    dW2 (A·9 segments) | ΣdR' (3)], plus part_map[pid] = dWm (3, C). FINAL also writes
    grad_feat and grad_image_resized. (The conv biases' grads Σdz = k·(Σdb − N·m_a − Σn·m_b)
    are formed from these sums on the host, in fp64, rather than summing rounded dz.)

    Each program handles `tpp` consecutive tiles and accumulates its one partial row over them
    (read-add-write of its own row, in tile order: deterministic), so the partial buffers stay
    small (the conv2 weight partials alone are 9·A·Cm values per row).
    """
    BLOCK: tl.constexpr = TH * TW
    KP: tl.constexpr = CMP * (9 + 9 * A) + 3
    OFF_W2: tl.constexpr = 9 * CMP
    OFF_R: tl.constexpr = OFF_W2 + 9 * A * CMP
    pid = tl.program_id(0)
    pp = part + pid * KP
    pm = part_map + pid.to(tl.int64) * (3 * C)
    cm = tl.arange(0, CMP)
    cmm = cm < CM
    for it in range(tpp):
        tile = pid * tpp + it
        b, lane, i, j, py, px = _tile(tile, n_ty, n_tx, TH, TW, 0)
        active = (py < tl.where(tile < n_tiles, h, 0)) & (px < w)  # tiles past the end: none
        hw = h * w
        pix = py * w + px
        src = in_ws + b * (6 * hw) + pix
        x0, x1, x2, r0, r1, r2 = _ld6(src, hw, active, CT)
        # Only y1 (BN1's output) and da1 stay live across the tap loop (one pixel per thread: each
        # Cm-vector held costs Cm registers); a1 = lrelu(y1) is rebuilt per tap, n1 after the loop.
        bias, wc0, wc1, wc2, wc3, wc4, wc5 = _w1_cols(w1p, cm, cmm, CM, CT)
        n1 = (_z1(x0, x1, x2, r0, r1, r2, bias, wc0, wc1, wc2, wc3, wc4, wc5) - _col(mu1, cm, cmm, CT)) * _col(
            is1, cm, cmm, CT
        )
        y1 = n1 * _col(g1, cm, cmm, CT) + _col(be1, cm, cmm, CT)
        ws_b = ws2 + b * (3 * A * hw)
        da1 = tl.zeros([CMP, BLOCK], CT)
        for t in range(9):  # dz2 at q − offset_t pairs with W2[:, :, t]
            ny = py - (t // 3 - 1)
            nx = px - (t % 3 - 1)
            ok = active & (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            q = ws_b + ny * w + nx
            if FINAL:
                a1 = tl.where(active[None, :], _lrelu(y1), 0.0)
            dz = _dz2(q, hw, A, 0, k2, m2a, m2b, ok, CT)
            da1 += dz[None, :] * _col(w2 + t * CM, cm, cmm, CT)
            if FINAL:
                _acc(pp + OFF_W2 + t * CMP + cm, tl.sum(a1 * dz[None, :], axis=1))
            if A == 3:
                dz = _dz2(q, hw, A, 1, k2, m2a, m2b, ok, CT)
                da1 += dz[None, :] * _col(w2 + (9 + t) * CM, cm, cmm, CT)
                if FINAL:
                    _acc(pp + OFF_W2 + (9 + t) * CMP + cm, tl.sum(a1 * dz[None, :], axis=1))
                dz = _dz2(q, hw, A, 2, k2, m2a, m2b, ok, CT)
                da1 += dz[None, :] * _col(w2 + (18 + t) * CM, cm, cmm, CT)
                if FINAL:
                    _acc(pp + OFF_W2 + (18 + t) * CMP + cm, tl.sum(a1 * dz[None, :], axis=1))
        db1 = tl.where(active[None, :], _lrelu_grad(y1, da1), 0.0)
        bias, wc0, wc1, wc2, wc3, wc4, wc5 = _w1_cols(w1p, cm, cmm, CM, CT)
        n1 = (_z1(x0, x1, x2, r0, r1, r2, bias, wc0, wc1, wc2, wc3, wc4, wc5) - _col(mu1, cm, cmm, CT)) * _col(
            is1, cm, cmm, CT
        )
        _acc(pp + cm, tl.sum(db1, axis=1))
        _acc(pp + CMP + cm, tl.sum(db1 * n1, axis=1))
        if FINAL:
            # BN1 backward: dz1 = k1·(db1 − m1a − n1·m1b) (m = 0 in eval)
            dz1 = _col(k1, cm, cmm, CT) * (db1 - _col(m1a, cm, cmm, CT) - n1 * _col(m1b, cm, cmm, CT))
            dz1 = tl.where(active[None, :], dz1, 0.0)
            _acc(pp + 2 * CMP + cm, tl.sum(tl.where(active[None, :], n1, 0.0), axis=1))
            _acc(pp + 3 * CMP + cm, tl.sum(dz1 * x0[None, :], axis=1))
            _acc(pp + 4 * CMP + cm, tl.sum(dz1 * x1[None, :], axis=1))
            _acc(pp + 5 * CMP + cm, tl.sum(dz1 * x2[None, :], axis=1))
            _acc(pp + 6 * CMP + cm, tl.sum(dz1 * r0[None, :], axis=1))
            _acc(pp + 7 * CMP + cm, tl.sum(dz1 * r1[None, :], axis=1))
            _acc(pp + 8 * CMP + cm, tl.sum(dz1 * r2[None, :], axis=1))
            # d[Xk, R] = W1ᵀ dz1
            dx0 = tl.sum(dz1 * wc0, axis=0)
            dx1 = tl.sum(dz1 * wc1, axis=0)
            dx2 = tl.sum(dz1 * wc2, axis=0)
            dr0 = tl.sum(dz1 * wc3, axis=0)
            dr1 = tl.sum(dz1 * wc4, axis=0)
            dr2 = tl.sum(dz1 * wc5, axis=0)
            wsa = ws_b + 2 * A * hw + pix
            al0, om0 = _sigmoid_pair(tl.load(wsa, mask=active, other=0.0))
            if A == 3:
                al1, om1 = _sigmoid_pair(tl.load(wsa + hw, mask=active, other=0.0))
                al2, om2 = _sigmoid_pair(tl.load(wsa + 2 * hw, mask=active, other=0.0))
            else:
                al1, om1 = al0, om0
                al2, om2 = al0, om0
            gy0, gy1, gy2 = _ld3(gy + b * s_gb + py * s_gh + px * s_gw, s_gc, active, CT)
            _st3(gxk + b * (3 * hw) + pix, hw, gy0 * om0 + dx0, gy1 * om1 + dx1, gy2 * om2 + dx2, active)
            # dR = gR + gY·α + (W1ᵀdz1)[3:6];  dR' = dR·R(1 − R) (through the sigmoid)
            grb = gr + b * s_rb + py * s_rh + px * s_rw
            d0 = (tl.load(grb, mask=active, other=0.0).to(CT) + gy0 * al0 + dr0) * r0 * (1.0 - r0)
            d1 = (tl.load(grb + s_rc, mask=active, other=0.0).to(CT) + gy1 * al1 + dr1) * r1 * (1.0 - r1)
            d2 = (tl.load(grb + 2 * s_rc, mask=active, other=0.0).to(CT) + gy2 * al2 + dr2) * r2 * (1.0 - r2)
            d0 = tl.where(active, d0, 0.0)
            d1 = tl.where(active, d1, 0.0)
            d2 = tl.where(active, d2, 0.0)
            _acc(pp + OFF_R, tl.sum(d0, axis=0))
            _acc(pp + OFF_R + 1, tl.sum(d1, axis=0))
            _acc(pp + OFF_R + 2, tl.sum(d2, axis=0))
            # second pass over F: grad_feat = Wmᵀ dR', partial grad_map_weight = Σ dR'·Fᵀ
            feat_b = feat + b * s_fb + py * s_fh + px * s_fw
            gf_b = gfeat + b * C * hw + pix
            for c0 in range(0, C, CC):
                cc = c0 + tl.arange(0, CC)
                cmask = cc < C
                m2d = active[None, :] & cmask[:, None]
                f = tl.load(feat_b[None, :] + cc[:, None] * s_fc, mask=m2d, other=0.0).to(CT)
                _acc(pm + cc, tl.sum(d0[None, :] * f, axis=1), cmask)
                _acc(pm + C + cc, tl.sum(d1[None, :] * f, axis=1), cmask)
                _acc(pm + 2 * C + cc, tl.sum(d2[None, :] * f, axis=1), cmask)
                gf = d0[None, :] * _col(map_w, cc, cmask, CT) + d1[None, :] * _col(map_w + C, cc, cmask, CT)
                gf += d2[None, :] * _col(map_w + 2 * C, cc, cmask, CT)
                tl.store(gf_b[None, :] + cc[:, None] * hw, gf, mask=m2d)
        tl.debug_barrier()  # the next tile's read-add-write may touch what other threads wrote


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _op_args(params_training_eps) -> Tuple[FusionBlockParams, bool, float]:
    """The op schema's arguments after feat and image: the 16 tensors of FusionBlockParams in
    order, then training and eps."""
    if len(params_training_eps) != len(PARAM_NAMES) + 2:
        raise TypeError(f"fusion_block (triton backend): expected the {len(PARAM_NAMES)} tensors of "
                        f"FusionBlockParams, training and eps; got {len(params_training_eps)} arguments")
    *tensors, training, eps = params_training_eps
    return FusionBlockParams(*tensors), bool(training), float(eps)


def _trainable(params: FusionBlockParams) -> Tuple[Tensor, ...]:
    """The 12 trainable tensors (TRAINABLE's order: the backward's gradients'), contiguous."""
    return tuple(getattr(params, k).contiguous() for k in TRAINABLE)


def _max_programs(t: Tensor) -> int:
    """Programs of the a1-level backward (each accumulates one partial row over its tiles).

    The count reaches the kernel as its `tpp` argument, whose value (1, a multiple of 16, or
    neither) is part of the compiled specialisation: a kernel cache built for another GPU
    (inpaint_fast.triton_kernels.aot, gpu_run_shapes.SM_COUNT) assumes this SM count."""
    if t.is_cuda:
        return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(t.device).multi_processor_count
    return _INTERPRET_PROGRAMS


def _check_ranges(feat: Tensor, image: Tensor, A: int, CMP: int, **grads: Tensor) -> None:
    """The kernels' int32 offsets: per batch item, the inputs, the (B, 6 | 3A, h, w) workspaces
    (``b * (6 * hw)`` forms 6·h·w in int32); over the launch, the partial-sum rows of the
    one-program-per-tile kernels (``pid * row``, pid int32)."""
    B, _, h, w = feat.shape
    tiles = B * triton.cdiv(h, _TILE[0]) * triton.cdiv(w, _TILE[1])
    check_index_range("fusion_block", feat=feat, image=image, **grads, workspace=max(6, 3 * A) * h * w,
                      partial_rows=tiles * max(1 + 2 * CMP, A * A + 4 * A))


def _device(t: Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def fusion_block_fwd(feat: Tensor, image: Tensor, *params_training_eps, fused: bool = True) -> Tuple[Tensor, ...]:
    """Forward of the fusion block (schema ``inpaint_fast::fusion_block_fwd``, inpaint_fast/ops/schemas.inc):
    ``fusion_block_fwd(feat, image, *FusionBlockParams, training, eps)``.

    Returns ``(out, alpha, raw, bn1_mean, bn1_var, bn2_mean, bn2_var)``: Y (B, 3, h, w),
    α (B, A, h, w), R (B, 3, h, w) in feat's dtype (fresh, contiguous) and the statistics BN used
    (batch statistics with biased variance in training, copies of the running ones in eval), fp32
    (fp64 for fp64 inputs). Nothing is mutated. ``fused=False`` runs eval as two launches
    (_map_kernel, then _fwd_kernel without halo) instead of the one halo kernel: a fallback kept
    for debugging and tested alongside; the op uses the default.
    """
    params, training, eps = _op_args(params_training_eps)
    B, C, h, w = feat.shape
    H, W = image.shape[-2:]
    CM, A = params.conv1_weight.shape[0], params.conv3_weight.shape[0]
    _check_ranges(feat, image, A, _pow2(CM))
    ct, CT = accumulator(feat.dtype)
    dev = feat.device
    mw, mb, w1, b1, g1, be1, w2, b2, g2, be2, w3, b3 = _trainable(params)
    w1p, w2t = pack_w1(w1.reshape(-1, 6).t().to(ct), b1.to(ct)), w2_taps(w2, ct)
    out = torch.empty((B, 3, h, w), dtype=feat.dtype, device=dev)
    alpha = torch.empty((B, A, h, w), dtype=feat.dtype, device=dev)
    raw = torch.empty((B, 3, h, w), dtype=feat.dtype, device=dev)
    CMP, CC = _pow2(CM), min(_CHUNK, _pow2(C))
    th, tw = _TILE
    n_ty, n_tx = triton.cdiv(h, th), triton.cdiv(w, tw)
    P = B * n_ty * n_tx
    fs, ims = feat.stride(), image.stride()
    kw = dict(CMP=CMP, CC=CC, CT=CT, num_warps=_WARPS)
    if not training:
        mean1, var1 = params.bn1_running_mean.to(ct, copy=True), params.bn1_running_var.to(ct, copy=True)
        mean2, var2 = params.bn2_running_mean.to(ct, copy=True), params.bn2_running_var.to(ct, copy=True)
        is1, is2 = invstd(var1, eps, ct), invstd(var2, eps, ct)

    with _device(feat):
        if not training and fused:
            gh, gw = _GRID
            f_ty, f_tx = triton.cdiv(h, gh - 2), triton.cdiv(w, gw - 2)
            scratch = torch.empty((B * f_ty * f_tx, 6, gh * gw), dtype=ct, device=dev)
            _fwd_kernel[(B * f_ty * f_tx,)](
                feat, *fs, image, *ims, scratch, scratch, raw, out, alpha, scratch,
                mw, mb, fold_bn1(w1, b1, g1, be1, mean1, is1, ct), w2t, b2, mean2, is2, g2, be2, w3, b3,
                C, H, W, h, w, CM, f_ty, f_tx,
                A=A, FUSED=True, STATS=False, HALO=1, GH=gh, GW=gw, **kw,
            )  # fmt: skip
            return out, alpha, raw, mean1, var1, mean2, var2

        # pass 1: [Xk, R] into a workspace (the one pass over F), R out, z1 statistics
        in_ws = torch.empty((B, 6, h, w), dtype=ct, device=dev)
        part1 = torch.empty((P, 1 + 2 * CMP), dtype=ct, device=dev)
        _map_kernel[(P,)](
            feat, *fs, image, *ims, in_ws, raw, part1, mw, mb, w1p,
            C, H, W, h, w, CM, n_ty, n_tx, STATS=training, STORE_R=True, TH=th, TW=tw, **kw,
        )  # fmt: skip
        if training:
            mean1, var1 = combine_stats(part1, CM, CMP, ct)
            is1 = invstd(var1, eps, ct)
            # pass 2: z2 statistics (a1 recomputed for the 3×3 taps)
            part2 = torch.empty((P, 1 + 2 * A), dtype=ct, device=dev)
            _fwd_kernel[(P,)](
                feat, *fs, image, *ims, in_ws, in_ws, raw, out, alpha, part2,
                mw, mb, fold_bn1(w1, b1, g1, be1, mean1, is1, ct), w2t, b2, b2, b2, g2, be2, w3, b3,
                C, H, W, h, w, CM, n_ty, n_tx,
                A=A, FUSED=False, STATS=True, HALO=0, GH=th, GW=tw, **kw,
            )  # fmt: skip
            mean2, var2 = combine_stats(part2, A, A, ct)
            is2 = invstd(var2, eps, ct)
        # pass 3: outputs
        _fwd_kernel[(P,)](
            feat, *fs, image, *ims, in_ws, in_ws, raw, out, alpha, in_ws,
            mw, mb, fold_bn1(w1, b1, g1, be1, mean1, is1, ct), w2t, b2, mean2, is2, g2, be2, w3, b3,
            C, H, W, h, w, CM, n_ty, n_tx,
            A=A, FUSED=False, STATS=False, HALO=0, GH=th, GW=tw, **kw,
        )  # fmt: skip
    return out, alpha, raw, mean1, var1, mean2, var2


def fusion_block_bwd(grad_out: Tensor, grad_alpha: Tensor, grad_raw: Tensor, feat: Tensor, image: Tensor,
                     *params_training_eps) -> Tuple[Tensor, ...]:
    """Backward of the fusion block (schema ``inpaint_fast::fusion_block_bwd``, inpaint_fast/ops/schemas.inc):
    ``fusion_block_bwd(grad_out, grad_alpha, grad_raw, feat, image, *FusionBlockParams, training, eps)``.

    The running statistics' places hold the statistics the forward normalised with. Returns the gradients of
    feat, of the *resized* image Xk (B, 3, h, w), and of the 12 trainable parameters (map, conv1,
    bn1, conv2, bn2, conv3: weight then bias), each with its parameter's shape and dtype.
    """
    params, training, eps = _op_args(params_training_eps)
    B, C, h, w = feat.shape
    H, W = image.shape[-2:]
    CM, A = params.conv1_weight.shape[0], params.conv3_weight.shape[0]
    _check_ranges(feat, image, A, _pow2(CM), grad_out=grad_out, grad_alpha=grad_alpha, grad_raw=grad_raw)
    ct, CT = accumulator(feat.dtype)
    dev = feat.device
    mw, mb, w1, b1, g1, be1, w2, b2, g2, be2, w3, b3 = _trainable(params)
    w1p, w2t = pack_w1(w1.reshape(-1, 6).t().to(ct), b1.to(ct)), w2_taps(w2, ct)
    CMP, CC = _pow2(CM), min(_CHUNK, _pow2(C))
    th, tw = _TILE
    n_ty, n_tx = triton.cdiv(h, th), triton.cdiv(w, tw)
    P = B * n_ty * n_tx
    N = B * h * w
    mean1, mean2 = params.bn1_running_mean.to(ct).contiguous(), params.bn2_running_mean.to(ct).contiguous()
    is1, is2 = invstd(params.bn1_running_var, eps, ct), invstd(params.bn2_running_var, eps, ct)
    k1, k2 = g1.to(ct) * is1, g2.to(ct) * is2  # BN backward: dz = γ·invstd·(...)
    grad_feat = torch.empty((B, C, h, w), dtype=feat.dtype, device=dev)
    grad_xk = torch.empty((B, 3, h, w), dtype=feat.dtype, device=dev)
    gos, gas, grs = grad_out.stride(), grad_alpha.stride(), grad_raw.stride()

    with _device(feat):
        # [Xk, R] recomputed into the workspace: pass 1 over F
        in_ws = torch.empty((B, 6, h, w), dtype=ct, device=dev)
        _map_kernel[(P,)](
            feat, *feat.stride(), image, *image.stride(), in_ws, in_ws, in_ws, mw, mb, w1p,
            C, H, W, h, w, CM, n_ty, n_tx, STATS=False, STORE_R=False, TH=th, TW=tw,
            CMP=CMP, CC=CC, CT=CT, num_warps=_WARPS,
        )  # fmt: skip
        # blend → α → conv3 → BN2 output grad; BN2 and conv3 reductions
        ws2 = torch.empty((B, 3 * A, h, w), dtype=ct, device=dev)
        part2 = torch.empty((P, A * A + 4 * A), dtype=ct, device=dev)
        _bwd_alpha_kernel[(P,)](
            in_ws, grad_out, *gos, grad_alpha, *gas, ws2, part2,
            fold_bn1(w1, b1, g1, be1, mean1, is1, ct), w2t, b2, mean2, is2, g2, be2, w3, b3,
            h, w, CM, n_ty, n_tx, A=A, TH=th, TW=tw, CMP=CMP, CT=CT, num_warps=_WARPS,
        )  # fmt: skip
        # partial rows are reduced, and the BN/bias formulas evaluated, in fp64 (tiny tensors)
        s2 = part2.double().sum(0)
        g_b3, g_w3 = s2[:A], s2[A : A + A * A]
        sdb2, sdbn2, sn2 = s2[A + A * A :].view(3, A)
        # Eval: exact zeros, not sums times 0: one NaN pixel would make every pixel's dz2 NaN.
        zero = torch.zeros_like(sdb2)
        m2a, m2b = (sdb2 / N, sdbn2 / N) if training else (zero, zero)
        g_b2 = k2.double() * (sdb2 - N * m2a - sn2 * m2b)  # Σdz2, from the sums
        # a1-level backward: tiles of _TILE_A1, `tpp` consecutive tiles per program, one partial
        # row per program
        ta, tb = _TILE_A1
        a_ty, a_tx = triton.cdiv(h, ta), triton.cdiv(w, tb)
        n_tiles = B * a_ty * a_tx
        tpp = triton.cdiv(n_tiles, _max_programs(feat))
        G = triton.cdiv(n_tiles, tpp)
        KP = CMP * (9 + 9 * A) + 3
        part = torch.zeros((G, KP), dtype=ct, device=dev)
        part_map = torch.zeros((G, 3, C), dtype=ct, device=dev)
        args = (feat, *feat.stride(), in_ws, grad_out, *gos, grad_raw, *grs, ws2, grad_feat, grad_xk, part, part_map)
        bn2_bwd = (k2, m2a.to(ct), m2b.to(ct))
        kw = dict(A=A, TH=ta, TW=tb, CMP=CMP, CC=CC, CT=CT, num_warps=_WARPS_A1)
        m1a = m1b = torch.zeros(CM, dtype=torch.float64, device=dev)
        if training:  # BN1's backward needs Σdb1 and Σdb1·n1 over the batch first
            _bwd_a1_kernel[(G,)](
                *args, mw, w1p, mean1, is1, g1, be1, k1, m1a.to(ct), m1b.to(ct), w2t, *bn2_bwd,
                C, h, w, CM, a_ty, a_tx, n_tiles, tpp, FINAL=False, **kw,
            )  # fmt: skip
            s1 = part[:, : 2 * CMP].double().sum(0)
            m1a, m1b = s1[:CM] / N, s1[CMP : CMP + CM] / N
            part.zero_()
        _bwd_a1_kernel[(G,)](
            *args, mw, w1p, mean1, is1, g1, be1, k1, m1a.to(ct), m1b.to(ct), w2t, *bn2_bwd,
            C, h, w, CM, a_ty, a_tx, n_tiles, tpp, FINAL=True, **kw,
        )  # fmt: skip
        s1 = part.double().sum(0)
        g_mw = part_map.double().sum(0)

    def seg(i: int) -> Tensor:
        return s1[i * CMP : i * CMP + CM]

    off_r = 9 * CMP + 9 * A * CMP
    g_w2 = s1[9 * CMP : off_r].view(A, 9, CMP)[:, :, :CM].permute(0, 2, 1)
    g_b1 = k1.double() * (seg(0) - N * m1a - seg(2) * m1b)  # Σdz1, from the sums
    grads = (
        g_mw, s1[off_r : off_r + 3],  # map
        torch.stack([seg(3 + k) for k in range(6)], dim=1), g_b1,  # conv1
        seg(1), seg(0),  # bn1
        g_w2, g_b2,  # conv2
        sdbn2, sdb2,  # bn2
        g_w3, g_b3,  # conv3
    )  # fmt: skip
    # fresh tensors: several of these are slices of one reduced row, and op outputs must not alias
    return (grad_feat, grad_xk) + tuple(g.reshape(p.shape).to(p.dtype, copy=True).contiguous()
                                        for g, p in zip(grads, _trainable(params)))  # fmt: skip
