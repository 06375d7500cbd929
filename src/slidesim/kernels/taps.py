"""Tap loops (floor L2): exact shift-and-accumulate sliding reductions over template taps, in bounded memory.

For each template tap (channel c, row i, column j) a loop adds one strided view of the image, combined with that
tap's values for every template of the bank, into an accumulator shaped like (a block of) the output. No window is
ever materialized and the image is never copied per template: temporaries are one output block, whose size is
set by ``memory_limit``. Every reduction runs here, on any device torch supports; :class:`TapReductions` is the
direct engine's set of primitives and the base of the others.

Backward passes recompute the same loops (nothing but the inputs is saved), so gradients cost no more memory than
the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .._geometry import Geometry
from .._validate import all_finite
from .boxes import channel_box_sums
from .precision import full_float32

_MAX_BLOCK_ELEMENTS = 2**20  # about 4 MiB of float32: keeps the per-tap updates close to the cache


def block_elements(memory_limit: int, itemsize: int) -> int:
    """Elements per output block: a few blocks must fit in ``memory_limit``; small enough to stay in cache."""
    return int(max(1024, min(_MAX_BLOCK_ELEMENTS, memory_limit // (4 * itemsize))))


def _blocks(batch: int, n_templates: int, geom: Geometry, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (t0, t1, r0, r1) so that batch × templates × rows × out_width stays near ``block`` elements."""
    per_row = batch * geom.out_width
    t_chunk = max(1, min(n_templates, block // per_row))
    rows = max(1, min(geom.out_height, block // (per_row * t_chunk)))
    for t0 in range(0, n_templates, t_chunk):
        for r0 in range(0, geom.out_height, rows):
            yield t0, min(n_templates, t0 + t_chunk), r0, min(geom.out_height, r0 + rows)


def _tap(plane: torch.Tensor, i: int, j: int, r0: int, r1: int, geom: Geometry) -> torch.Tensor:
    """View of ``plane`` [..., Hp, Wp] under template tap (i, j) for output rows r0:r1 -> [..., r1 - r0, W']."""
    sy, sx = geom.stride
    y0 = r0 * sy + i * geom.dilation[0]
    x0 = j * geom.dilation[1]
    return plane[..., y0 : y0 + (r1 - r0 - 1) * sy + 1 : sy, x0 : x0 + (geom.out_width - 1) * sx + 1 : sx]


def gather_windows(
    plane: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor, geom: Geometry
) -> torch.Tensor:
    """The windows of outputs (b, y, x) (index tensors [n]) of plane [B, C, Hp, Wp] -> [n, C, h, w]."""
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    h, w = geom.template_size
    rows = torch.arange(h, device=b.device) * dy
    cols = torch.arange(w, device=b.device) * dx
    channels = torch.arange(plane.shape[1], device=b.device)[None, :, None, None]
    return plane[
        b[:, None, None, None],
        channels,
        (y[:, None] * sy + rows)[:, None, :, None],
        (x[:, None] * sx + cols)[:, None, None, :],
    ]


def tap_sums_rounding_bound(plane: torch.Tensor, weights: torch.Tensor) -> float:
    """A bound on the rounding error of float64 tap-by-tap window sums Σ weights · plane (conv2d, tap loops): n
    products and additions each within ε of a partial sum of at most max|plane| · Σ|weights|, n = taps per window,
    twice over for slack. plane [B, C', Hp, Wp], weights [Bm, Tm, C', h, w]."""
    if plane.numel() == 0 or weights.numel() == 0:
        return 0.0
    taps = weights.shape[-3] * weights.shape[-2] * weights.shape[-1]
    largest = float(plane.detach().abs().amax())
    spread = float(weights.detach().abs().sum(dim=(-3, -2, -1)).amax())
    return 2 * taps * torch.finfo(torch.float64).eps * largest * spread


def _active_taps(values: torch.Tensor) -> list[tuple[int, int, int]]:
    """Taps (c, i, j) of a [Bk, T, C, h, w] tensor that are non-zero for some template (one host sync)."""
    active = (values != 0).flatten(0, 1).any(dim=0).cpu()
    return [tuple(idx) for idx in active.nonzero().tolist()]  # type: ignore[misc]


def _all_taps(values: torch.Tensor) -> list[tuple[int, int, int]]:
    C, h, w = values.shape[-3:]
    return [(c, i, j) for c in range(C) for i in range(h) for j in range(w)]


@dataclass(frozen=True)
class _Taps:
    """The taps a tap loop visits, and how.

    Attributes:
        taps: (c, i, j) of every tap to visit.
        partial: The taps that lie outside the window of some templates (a zero mask weight) on an image that is
            not finite: their products are zeroed there, since 0 · NaN would carry a masked-out NaN into the sum.
        support: Bool [Bm, Tm, Cm, h, w], true where a tap is in a template's window (None: every tap).
    """

    taps: list[tuple[int, int, int]]
    partial: frozenset[tuple[int, int, int]] = frozenset()
    support: torch.Tensor | None = None


def _loop_taps(image: torch.Tensor, values: torch.Tensor, support: torch.Tensor | None) -> _Taps:
    """Taps to visit for ``values`` [Bk, T, C, h, w] on ``image`` given the windows' ``support`` (None: all).

    On a finite image a zero value adds an exact zero, so the taps zero for every template are skipped. On an image
    with NaN or inf, a tap counts wherever it is in the window, whatever the value there (NaN · 0 is NaN, as in
    slidesim.reference), and nowhere else.
    """
    if all_finite(image.detach()):
        return _Taps(_active_taps(values))
    if support is None:
        return _Taps(_all_taps(values))
    C = values.shape[-3]
    per_tap = support.expand(-1, -1, C, -1, -1) if support.shape[2] == 1 else support
    per_tap = per_tap.flatten(0, 1)
    some, every = per_tap.any(dim=0), per_tap.all(dim=0)
    taps = [tuple(idx) for idx in some.nonzero().tolist()]
    partial = frozenset(tuple(idx) for idx in (some & ~every).nonzero().tolist())
    return _Taps(taps, partial, support)  # type: ignore[arg-type]


def _tap_weight(weights: torch.Tensor, t0: int, t1: int, c: int, i: int, j: int) -> torch.Tensor:
    """Mask weight (or support) of tap (c, i, j) for templates t0:t1, shaped to broadcast over an output block."""
    templates = slice(t0, t1) if weights.shape[1] > 1 else slice(None)
    return weights[:, templates, min(c, weights.shape[2] - 1), i, j, None, None]


def _sum_to(tensor: torch.Tensor, leading: int) -> torch.Tensor:
    """Sum a [B, ...] tensor over its batch axis when the target has a single leading entry."""
    return tensor.sum(dim=0, keepdim=True) if leading == 1 and tensor.shape[0] != 1 else tensor


# --------------------------------------------------------------------------------------------------- correlation
def _correlate_forward(
    image: torch.Tensor, kernel: torch.Tensor, support: torch.Tensor | None, geom: Geometry, block: int
) -> torch.Tensor:
    B = image.shape[0]
    T = kernel.shape[1]
    out = image.new_zeros(B, T, geom.out_height, geom.out_width)
    plan = _loop_taps(image, kernel, support)
    for t0, t1, r0, r1 in _blocks(B, T, geom, block):
        acc = out[:, t0:t1, r0:r1]
        for c, i, j in plan.taps:
            weight = kernel[:, t0:t1, c, i, j, None, None]
            window = _tap(image[:, c], i, j, r0, r1, geom)[:, None]
            if (c, i, j) in plan.partial:
                outside = ~_tap_weight(plan.support, t0, t1, c, i, j)
                acc.add_((window * weight).masked_fill_(outside, 0.0))
            else:
                acc.addcmul_(window, weight)
    return out


class _Correlate(torch.autograd.Function):
    """Σ_c Σ_taps kernel · image: [B, C, Hp, Wp] × [Bk, T, C, h, w] -> [B, T, H', W'] (support: see correlate)."""

    @staticmethod
    def forward(ctx, image, kernel, support, geom, block):
        ctx.save_for_backward(image, kernel, support)
        ctx.geom, ctx.block = geom, block
        return _correlate_forward(image, kernel, support, geom, block)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        image, kernel, support = ctx.saved_tensors
        geom, block = ctx.geom, ctx.block
        need_image, need_kernel = ctx.needs_input_grad[:2]
        grad_image = torch.zeros_like(image) if need_image else None
        grad_kernel = torch.zeros_like(kernel) if need_kernel else None
        if not need_kernel:  # the image's gradient needs the non-zero kernel values only
            plan = _Taps(_active_taps(kernel))
        elif all_finite(image.detach()):  # a zero kernel value still has a gradient
            plan = _Taps(_all_taps(kernel))
        else:  # ... except where the tap is outside the window: the forward pass left it out
            plan = _loop_taps(image, kernel, support)
        with full_float32():  # the matrix products below would use TF32 on CUDA where the user enabled it
            _correlate_backward(image, kernel, grad, geom, block, plan, grad_image, grad_kernel)
        return grad_image, grad_kernel, None, None, None


def _correlate_backward(image, kernel, grad, geom, block, plan, grad_image, grad_kernel) -> None:
    """Accumulate the gradients of :func:`_correlate_forward` into grad_image and grad_kernel (None: not needed)."""
    B, T = grad.shape[:2]
    Bk = kernel.shape[0]
    for t0, t1, r0, r1 in _blocks(B, T, geom, block):
        g = grad[:, t0:t1, r0:r1].reshape(B, t1 - t0, -1)  # [B, Tc, N]
        for c, i, j in plan.taps:
            if grad_image is not None:
                weight = kernel[:, t0:t1, c, i, j][:, None, :]  # [Bk, 1, Tc]
                target = _tap(grad_image[:, c], i, j, r0, r1, geom)
                target += (weight @ g).view(target.shape)
            if grad_kernel is not None:
                window = _tap(image[:, c], i, j, r0, r1, geom).reshape(B, -1, 1)
                update = _sum_to((g @ window)[..., 0], Bk)  # [Bk, Tc]
                if (c, i, j) in plan.partial:  # no gradient from the windows a tap is not in
                    update = update.masked_fill(~_tap_weight(plan.support, t0, t1, c, i, j)[..., 0, 0], 0.0)
                grad_kernel[:, t0:t1, c, i, j] += update


# ------------------------------------------------------------------------------------------------------ distance
def _difference(window: torch.Tensor, value: torch.Tensor, period: float | None, out: torch.Tensor) -> torch.Tensor:
    """Signed difference window − value, taken the short way round for a circular channel, into ``out``."""
    torch.sub(window, value, out=out)
    if period is not None:
        out.add_(period / 2).remainder_(period).sub_(period / 2)
    return out


def _distance_taps(image: torch.Tensor, templates: torch.Tensor, weights: torch.Tensor | None) -> _Taps:
    if weights is None:
        return _Taps(_all_taps(templates))
    weights = weights.expand(-1, -1, templates.shape[2], -1, -1)
    return _loop_taps(image, weights, weights != 0)


def _distance_forward(image, templates, weights, power, periods, geom, block):
    B = image.shape[0]
    T = templates.shape[1]
    out = image.new_zeros(B, T, geom.out_height, geom.out_width)
    plan = _distance_taps(image, templates, weights)
    for t0, t1, r0, r1 in _blocks(B, T, geom, block):
        acc = out[:, t0:t1, r0:r1]
        scratch = torch.empty_like(acc)
        for c, i, j in plan.taps:
            window = _tap(image[:, c], i, j, r0, r1, geom)[:, None]
            diff = _difference(window, templates[:, t0:t1, c, i, j, None, None], periods and periods[c], scratch)
            diff.abs_() if power == 1 else diff.mul_(diff)
            if weights is None:
                acc.add_(diff)
                continue
            weight = _tap_weight(weights, t0, t1, c, i, j)
            if (c, i, j) in plan.partial:
                diff.masked_fill_(weight == 0, 0.0)
            acc.addcmul_(diff, weight)
    return out


class _Distance(torch.autograd.Function):
    """Σ_c Σ_taps w · |d|^power with d = image − template (circular where a period is given)."""

    @staticmethod
    def forward(ctx, image, templates, weights, power, periods, geom, block):
        ctx.save_for_backward(image, templates, weights)
        ctx.power, ctx.periods, ctx.geom, ctx.block = power, periods, geom, block
        return _distance_forward(image, templates, weights, power, periods, geom, block)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        image, templates, weights = ctx.saved_tensors
        power, periods, geom, block = ctx.power, ctx.periods, ctx.geom, ctx.block
        need_image, need_templates = ctx.needs_input_grad[:2]
        grad_image = torch.zeros_like(image) if need_image else None
        grad_templates = torch.zeros_like(templates) if need_templates else None
        B, T = grad.shape[:2]
        Bk = templates.shape[0]
        plan = _distance_taps(image, templates, weights)
        for t0, t1, r0, r1 in _blocks(B, T, geom, block):
            g = grad[:, t0:t1, r0:r1]
            slope = torch.empty_like(g)
            for c, i, j in plan.taps:
                window = _tap(image[:, c], i, j, r0, r1, geom)[:, None]
                diff = _difference(window, templates[:, t0:t1, c, i, j, None, None], periods and periods[c], slope)
                diff.sign_() if power == 1 else diff.mul_(2)
                diff.mul_(g)
                if weights is not None:
                    weight = _tap_weight(weights, t0, t1, c, i, j)
                    if (c, i, j) in plan.partial:
                        diff.masked_fill_(weight == 0, 0.0)
                    diff.mul_(weight)
                if need_image:
                    _tap(grad_image[:, c], i, j, r0, r1, geom).add_(diff.sum(dim=1))
                if need_templates:
                    grad_templates[:, t0:t1, c, i, j] -= _sum_to(diff.sum(dim=(2, 3)), Bk)
        return grad_image, grad_templates, None, None, None, None, None


# --------------------------------------------------------------------------------------------------- primitives
@dataclass(frozen=True)
class TapReductions:
    """The sliding reductions the scoring code needs (:class:`slidesim.scoring.primitives.Primitives`), computed by
    tap loops.

    Attributes:
        geom: Stride, dilation and output size.
        block: Elements per output block (bounds every temporary).
    """

    geom: Geometry
    block: int
    spreads_nan = False  # tap loops keep a NaN within the windows that hold it
    cumulative_window_sums = False  # window sums are tap sums: exact zeros, and accurate relative to themselves
    global_cross_error = False  # the cross term's round-off is per window (ε·√n·Σ|I||K|), not spread by a transform
    squares_by_correlation = False  # ssd sums its squared differences tap by tap, exactly

    def for_stream(self) -> TapReductions:
        """The reductions to use while a bank streams through in chunks (engines that cache per image override)."""
        return self

    def correlate(
        self,
        image: torch.Tensor,
        kernel: torch.Tensor,
        support: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` (bool [Bm, Tm, Cm, h, w], None: every tap) says which taps are in each template's window. It
        matters only on images with NaN or inf: a tap outside the window adds nothing there, even a NaN. Integer
        images (8- and 16-bit, as a call stores them) are widened to the kernel's dtype first.
        """
        if not image.is_floating_point():
            image = image.to(kernel.dtype)
        kernel = kernel.to(image.dtype)
        if image.requires_grad or kernel.requires_grad:
            result = _Correlate.apply(image, kernel, support, self.geom, self.block)
        else:
            result = _correlate_forward(image, kernel, support, self.geom, self.block)
        return result if out_dtype is None else result.to(out_dtype)

    def correlate_centred(
        self,
        image: torch.Tensor,
        shift: torch.Tensor,
        kernel: torch.Tensor,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor | None:
        """None: tap loops read each pixel once per tap, so the caller's centred copy costs less than centring as
        they read."""
        del image, shift, kernel, out_dtype
        return None

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps w · |image − template|^power -> [B, T, H', W'] (weights [Bm, Tm, Cm, h, w] or None)."""
        weights = weights.detach() if weights is not None else None
        args = (image, templates, weights, power, periods, self.geom, self.block)
        if image.requires_grad or templates.requires_grad:
            return _Distance.apply(*args)
        return _distance_forward(*args)

    def window_sum(self, plane: torch.Tensor, weights: torch.Tensor | None, exact_zeros: bool = True) -> torch.Tensor:
        """Σ_taps weights · plane for statistics. plane [B, C', Hp, Wp], weights [Bm, Tm, C', h, w] or None for an
        unweighted box -> [B, Tm, H', W'] (channels summed). Tap loops always give exact zeros.

        An unweighted box of finite values whose zeros need not be exact (zncc's moments, whose degenerate
        windows the exact flat test decides) is summed from a summed-area table instead: O(1) per window rather
        than a pass per tap, within the same rounding bound
        (:func:`slidesim.scoring.bounds.variance_rounding_bound`)."""
        if weights is None and not exact_zeros and all_finite(plane):  # a table would carry an inf everywhere
            return channel_box_sums(plane, self.geom)
        if weights is None:
            weights = torch.ones(1, 1, plane.shape[1], *self.geom.template_size, dtype=plane.dtype, device=plane.device)
            return self.correlate(plane, weights)
        return self.correlate(plane, weights, weights != 0)  # a zero weight takes its tap out of the window

    def window_sum_bounded(self, plane: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(Σ weights · plane over each window, tap by tap -> [B, Tm, H', W']; a bound on any window's rounding
        error). plane [B, C', Hp, Wp], weights [Bm, Tm, C', h, w]."""
        return self.window_sum(plane, weights), tap_sums_rounding_bound(plane, weights)

    def window_flat(
        self, plane: torch.Tensor, support: torch.Tensor | None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """True where all values of plane [B, 1, Hp, Wp] under a window's support [Bm, Tm, 1, h, w] (None: every
        tap) are equal, or the support is empty -> [B, Tm, r1 - r0, W'] bool for output rows r0:r1 (default all)."""
        plane = plane.detach()
        if not plane.is_floating_point():  # 8- and 16-bit integers: exact in float32, where min and max all run
            plane = plane.to(torch.float32)
        geom = self.geom
        r0, r1 = rows if rows is not None else (0, geom.out_height)
        if support is None:
            support = torch.ones(1, 1, 1, *geom.template_size, dtype=torch.bool, device=plane.device)
        B = plane.shape[0]
        Tm = support.shape[1]
        big = torch.finfo(plane.dtype).max
        hi = plane.new_full((B, Tm, r1 - r0, geom.out_width), -big)
        lo = plane.new_full((B, Tm, r1 - r0, geom.out_width), big)
        shared = support.shape[0] == 1 and support.shape[1] == 1
        for _, i, j in _active_taps(support):
            window = _tap(plane[:, 0], i, j, r0, r1, geom)[:, None]
            if shared:  # the tap is in every window's support
                torch.maximum(hi, window, out=hi)
                torch.minimum(lo, window, out=lo)
            else:
                on = support[:, :, 0, i, j, None, None]
                hi = torch.where(on, torch.maximum(hi, window), hi)
                lo = torch.where(on, torch.minimum(lo, window), lo)
        return hi <= lo  # equal values, or an empty support (hi = −max < lo = +max)

    def window_squares(self, plane: torch.Tensor, shift: torch.Tensor, deviations: bool) -> torch.Tensor | None:
        """A fused Σ (I − s)² (minus (Σ (I − s))² / n with ``deviations``) over unmasked windows, or None: the tap
        loops have none, and the scoring code combines :meth:`window_sum` calls instead."""
        del plane, shift, deviations
        return None

    def window_factors(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        tolerance: float,
        dtype: torch.dtype,
        exact: bool = False,
        deviations: bool = True,
    ) -> torch.Tensor | None:
        """A fused 1/√(variance × n) per unmasked window, or None: see :meth:`window_squares`."""
        del plane, shift, tolerance, dtype, exact, deviations
        return None

    def rectangle_squares(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        weights: torch.Tensor,
        tolerance: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor | None:
        """A fused n · variance (or its inverse root) over rectangular footprints, or None: see
        :meth:`window_squares`."""
        del plane, shift, weights, tolerance, dtype
        return None

    def plane_energy(self, plane: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
        """A fused Σ (I − s)² per image, or None: see :meth:`window_squares`."""
        del plane, shift
        return None
