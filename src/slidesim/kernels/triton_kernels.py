"""Triton kernels (floor L2) of the fused distance reduction Σ w·|wrap(I − T)|^p (p = 1 or 2), forward and backward.

Imported only by :mod:`slidesim.kernels.triton_ops`. Layouts are those of the numba kernels: image [B, C, Hp, Wp],
templates [Bk, T, C, h, w], weights [Bw, Tw, Cw, h, w], periods [C] (0 where a channel is not circular), out and
grad [B, T, H', W']. Broadcast axes (Bk, Bw, Tw, Cw of size 1) arrive with stride 0, so one address formula serves
shared and per-image banks, shared and per-template masks.

Every kernel accumulates in float32 for float16, bfloat16 and float32 inputs and in float64 for float64 (``FP64``), and
loads its operands in their own dtype. No kernel uses atomics: each program owns the outputs it writes, so the
results do not depend on scheduling.

Forward: a program owns BLOCK_T templates × BLOCK_P output positions of one image. For every tap it loads one
image value per position and one value per template, and adds BLOCK_T × BLOCK_P differences: each image load
feeds BLOCK_T differences, each template load BLOCK_P. Backward for images is a gather (each program owns image
pixels and visits the windows that contain them); backward for templates owns (templates, tap) pairs and reduces
over every output position of one image; the caller sums over images when the bank is shared.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _wrap(d, period, CIRCULAR: tl.constexpr):
    """The signed difference taken the short way round where period > 0 (torch.remainder semantics)."""
    if CIRCULAR:
        safe = tl.where(period > 0, period, 1.0)  # no division by the 0 of a linear channel
        half = 0.5 * safe
        shifted = d + half
        wrapped = shifted - safe * tl.floor(shifted / safe) - half
        d = tl.where(period > 0, wrapped, d)
    return d


@triton.jit
def _slope(d, POWER: tl.constexpr):
    """d/dd of |d|^POWER: sign(d) (NaN stays NaN, as torch.sign) or 2d."""
    if POWER == 1:
        one = tl.full(d.shape, 1.0, d.dtype)
        sign = tl.where(d > 0, one, tl.where(d < 0, -one, 0.0 * one))
        return tl.where(d != d, d, sign)
    else:
        return 2.0 * d


@triton.jit
def distance_forward(
    image,
    templates,
    weights,
    periods,
    out,
    C,
    T,
    Ho,
    Wo,
    h,
    w,
    s_ib,
    s_ic,
    s_iy,
    s_ix,
    s_tb,
    s_tt,
    s_tc,
    s_ty,
    s_tx,
    s_wb,
    s_wt,
    s_wc,
    s_wy,
    s_wx,
    sy,
    sx,
    dy,
    dx,
    POWER: tl.constexpr,
    WEIGHTED: tl.constexpr,
    CIRCULAR: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """out[b, t, y, x] = Σ_c Σ_i Σ_j w · |wrap(I[b, c, y·sy + i·dy, x·sx + j·dx] − T[b, t, c, i, j])|^POWER."""
    ACC = tl.float64 if FP64 else tl.float32  # a bool flag, not a dtype: torch.compile passes it through
    pid_p = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    p_ok = p < Ho * Wo
    t_ok = t < T
    oy = p // Wo
    ox = p % Wo
    pixels = image + b * s_ib + (oy * sy).to(tl.int64) * s_iy + (ox * sx).to(tl.int64) * s_ix
    values = templates + b * s_tb + t.to(tl.int64) * s_tt
    taps = weights + b * s_wb + t.to(tl.int64) * s_wt
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=ACC)
    for c in range(C):
        # defined in the loop, not carried through it: its type would otherwise have to match a float literal
        period = tl.load(periods + c).to(ACC) if CIRCULAR else 0.0
        for i in range(h):
            for j in range(w):
                x = tl.load(pixels + c * s_ic + (i * dy) * s_iy + (j * dx) * s_ix, mask=p_ok, other=0.0).to(ACC)
                v = tl.load(values + c * s_tc + i * s_ty + j * s_tx, mask=t_ok, other=0.0).to(ACC)
                d = _wrap(x[None, :] - v[:, None], period, CIRCULAR)
                e = tl.abs(d) if POWER == 1 else d * d
                if WEIGHTED:
                    weight = tl.load(taps + c * s_wc + i * s_wy + j * s_wx, mask=t_ok, other=0.0).to(ACC)
                    # a zero weight excludes the tap, so a NaN pixel under it does not reach the window
                    e = tl.where(weight[:, None] != 0, e * weight[:, None], 0.0)
                acc += e
    n_out = Ho * Wo
    targets = out + (b * T + t[:, None].to(tl.int64)) * n_out + p[None, :]
    tl.store(targets, acc.to(out.dtype.element_ty), mask=t_ok[:, None] & p_ok[None, :])


@triton.jit
def distance_backward_image(
    image,
    templates,
    weights,
    periods,
    grad,
    grad_image,
    T,
    Hp,
    Wp,
    Ho,
    Wo,
    h,
    w,
    s_ib,
    s_ic,
    s_iy,
    s_ix,
    s_tb,
    s_tt,
    s_tc,
    s_ty,
    s_tx,
    s_wb,
    s_wt,
    s_wc,
    s_wy,
    s_wx,
    sy,
    sx,
    dy,
    dx,
    POWER: tl.constexpr,
    WEIGHTED: tl.constexpr,
    CIRCULAR: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """grad_image[b, c, py, px] = Σ over windows (t, y, x, i, j) that read the pixel of w · slope · grad[b, t, y, x]."""
    ACC = tl.float64 if FP64 else tl.float32  # a bool flag, not a dtype: torch.compile passes it through
    pid_q = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    q = pid_q * BLOCK_P + tl.arange(0, BLOCK_P)
    q_ok = q < Hp * Wp
    py = q // Wp
    px = q % Wp
    x = tl.load(image + b * s_ib + c * s_ic + py.to(tl.int64) * s_iy + px.to(tl.int64) * s_ix, mask=q_ok, other=0.0)
    x = x.to(ACC)
    period = 0.0
    if CIRCULAR:
        period = tl.load(periods + c).to(ACC)
    grads = grad + b * T * Ho * Wo
    total = tl.zeros((BLOCK_P,), dtype=ACC)
    for i in range(h):
        ry = py - i * dy
        oy = ry // sy
        row_ok = (ry >= 0) & (ry % sy == 0) & (oy < Ho)
        for j in range(w):
            rx = px - j * dx
            ox = rx // sx
            ok = q_ok & row_ok & (rx >= 0) & (rx % sx == 0) & (ox < Wo)
            position = oy * Wo + ox
            for t0 in range(0, T, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < T
                both = t_ok[:, None] & ok[None, :]
                g = tl.load(grads + t[:, None].to(tl.int64) * Ho * Wo + position[None, :], mask=both, other=0.0)
                v = tl.load(templates + b * s_tb + t * s_tt + c * s_tc + i * s_ty + j * s_tx, mask=t_ok, other=0.0)
                d = _wrap(x[None, :] - v.to(ACC)[:, None], period, CIRCULAR)
                s = _slope(d, POWER) * g.to(ACC)
                if WEIGHTED:
                    weight = tl.load(
                        weights + b * s_wb + t * s_wt + c * s_wc + i * s_wy + j * s_wx, mask=t_ok, other=0.0
                    ).to(ACC)
                    s = s * weight[:, None]
                    both = both & (weight[:, None] != 0)
                total += tl.sum(tl.where(both, s, 0.0), axis=0)
    target = grad_image + b * s_ib + c * s_ic + py.to(tl.int64) * s_iy + px.to(tl.int64) * s_ix
    tl.store(target, total.to(grad_image.dtype.element_ty), mask=q_ok)


@triton.jit
def distance_backward_templates(
    image,
    templates,
    weights,
    periods,
    grad,
    grad_templates,
    T,
    Ho,
    Wo,
    h,
    w,
    s_ib,
    s_ic,
    s_iy,
    s_ix,
    s_tb,
    s_tt,
    s_tc,
    s_ty,
    s_tx,
    s_wb,
    s_wt,
    s_wc,
    s_wy,
    s_wx,
    sy,
    sx,
    dy,
    dx,
    POWER: tl.constexpr,
    WEIGHTED: tl.constexpr,
    CIRCULAR: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """grad_templates[b, t, c, i, j] = −Σ_{y, x} w · slope · grad[b, t, y, x] over the windows of image b
    (grad_templates is [B, T, C, h, w], contiguous)."""
    ACC = tl.float64 if FP64 else tl.float32  # a bool flag, not a dtype: torch.compile passes it through
    tap = tl.program_id(0)  # taps on the axis without the 65535 limit: C·h·w can exceed it
    pid_t = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    c = tap // (h * w)
    i = (tap // w) % h
    j = tap % w
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    v = tl.load(templates + b * s_tb + t * s_tt + c * s_tc + i * s_ty + j * s_tx, mask=t_ok, other=0.0).to(ACC)
    weight = tl.full((BLOCK_T,), 1.0, ACC)
    if WEIGHTED:
        weight = tl.load(weights + b * s_wb + t * s_wt + c * s_wc + i * s_wy + j * s_wx, mask=t_ok, other=0.0)
        weight = weight.to(ACC)
    period = 0.0
    if CIRCULAR:
        period = tl.load(periods + c).to(ACC)
    pixels = image + b * s_ib + c * s_ic + (i * dy) * s_iy + (j * dx) * s_ix
    grads = grad + (b * T + t[:, None].to(tl.int64)) * Ho * Wo
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=ACC)
    for p0 in range(0, Ho * Wo, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < Ho * Wo
        oy = p // Wo
        ox = p % Wo
        x = tl.load(pixels + (oy * sy).to(tl.int64) * s_iy + (ox * sx).to(tl.int64) * s_ix, mask=p_ok, other=0.0)
        both = t_ok[:, None] & p_ok[None, :]
        g = tl.load(grads + p[None, :], mask=both, other=0.0).to(ACC)
        d = _wrap(x.to(ACC)[None, :] - v[:, None], period, CIRCULAR)
        acc += tl.where(both, _slope(d, POWER) * g, 0.0)
    total = -tl.sum(acc, axis=1) * weight
    if WEIGHTED:
        total = tl.where(weight != 0, total, 0.0)
    C = tl.num_programs(0) // (h * w)
    target = grad_templates + (((b * T + t) * C + c) * h + i) * w + j
    tl.store(target, total.to(grad_templates.dtype.element_ty), mask=t_ok)
