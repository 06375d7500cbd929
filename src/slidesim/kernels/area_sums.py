"""Window statistics in O(H·W) (floor L2): :class:`AreaSumReductions`, the tap loops' reductions with their window
sums, squares and flatness taken from summed-area tables, fused numba passes and transforms.

Unmasked windows: one fused numba pass over the centred image gives every window's Σ (I − s)² less its squared
mean (or 1/√ of it) in float64 (:mod:`slidesim.kernels.numba_windows`); without numba, summed-area tables in
float64 give the same sums. Masked windows: float64 FFT sums; where exact zeros are needed (the energies of ncc,
ssd and ssd_normed), the windows that the transform's rounding could leave near zero are summed again tap by tap
(integer planes and weights: every sum is rounded to the integer it is), or conv2d for small templates.
Flatness: an exact count of differing neighbour pairs per window, run only on windows that may be flat. All
of these spread a NaN or inf beyond its windows: the scoring code fills NaN pixels before they run and marks the
windows that hold them after (:mod:`slidesim.scoring.holes`), and the engines that use them do not run images
with ±inf.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._threads import numba_threads
from .boxes import box_sums, channel_box_sums, integral_table
from .conv import UNFOLD_BUDGET, conv_correlate
from .spectral import fft_correlate, transform_size
from .taps import TapReductions, gather_windows, tap_sums_rounding_bound

_NO_FACTORS = np.zeros((0, 0, 0))  # tells the fused kernel to write values, not factors
_NO_OUT = np.zeros((1, 1, 1))  # the values' array when the kernel writes factors
# Weighted windows of more taps than this sum with exact zeros through a float64 FFT, fewer through conv2d: torch's
# float64 conv2d costs a multiply-add per tap and output (a 40×40 disk on 512²: 1.4 s, the FFT 10 ms).
FFT_EXACT_TAPS = 64
_EXACT_SUMS_BYTES = 32 * 2**20  # gathered float64 windows at a time when doubtful windows are summed tap by tap
# An FFT window sum is kept where its rounding bound is at most this fraction of it: tap sums are accurate relative
# to themselves, and float64 scores are held to 1e-9 of the reference.
_KEPT_FRACTION = 1e-10


def fused_statistics_available() -> bool:
    """Whether numba is installed, for the one-pass window statistics of :mod:`slidesim.kernels.numba_windows`."""
    return importlib.util.find_spec("numba") is not None


_IN_PLACE_DTYPES = (torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32)


def can_score_in_place(finite: bool, image: torch.Tensor) -> bool:
    """Whether the numba kernels can score listed windows straight from ``image`` (the exact rescoring): finite, on
    the CPU, in a dtype they read, numba installed."""
    return finite and image.device.type == "cpu" and image.dtype in _IN_PLACE_DTYPES and fused_statistics_available()


def _neighbour_changes(plane: torch.Tensor, dilation: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(where a pixel differs from its neighbour ``dilation`` further along its row [..., H, W − dx], and along
    its column [..., H − dy, W]), bool: the taps of a flat window never do."""
    dy, dx = dilation
    return plane[..., :, dx:] != plane[..., :, :-dx], plane[..., dy:, :] != plane[..., :-dy, :]


def _connected(support: torch.Tensor) -> torch.Tensor:
    """Whether each support [..., h, w] (bool) is one 4-connected region, or empty -> [...] bool.

    Supports whose rows each hold one run of taps, the runs of consecutive rows sharing a column (disks, turned
    rectangles: any convex footprint) are connected; the others grow the region of their first tap by its
    neighbours inside the support until it stops."""
    flat = support.reshape(-1, *support.shape[-2:])
    found = _row_runs_connected(flat)
    for n in (~found).nonzero().flatten().tolist():
        found[n] = _grown_connected(flat[n])
    return found.reshape(support.shape[:-2])


def _row_runs_connected(flat: torch.Tensor) -> torch.Tensor:
    """[N, h, w] bool -> [N]: every non-empty row is one run, the non-empty rows are consecutive, and the runs of
    neighbouring rows share a column (a sufficient test of connectedness)."""
    w = flat.shape[-1]
    columns = torch.arange(w)
    counts = flat.sum(dim=-1)  # [N, h]
    first = torch.where(flat, columns, w).amin(dim=-1)
    last = torch.where(flat, columns, -1).amax(dim=-1)
    filled = counts > 0
    runs = ~filled | (last - first + 1 == counts)
    overlap = torch.maximum(first[:, 1:], first[:, :-1]) <= torch.minimum(last[:, 1:], last[:, :-1])
    both = filled[:, 1:] & filled[:, :-1]
    starts = (filled[:, 1:] & ~filled[:, :-1]).sum(dim=-1) + filled[:, 0].long()  # blocks of non-empty rows
    return runs.all(dim=-1) & (overlap | ~both).all(dim=-1) & (starts <= 1)


def _grown_connected(region: torch.Tensor) -> bool:
    """Whether one support [h, w] (bool) is 4-connected: the first tap's region grown until it stops."""
    grown = torch.zeros_like(region)
    if not bool(region.any()):
        return True
    grown.view(-1)[int(region.flatten().to(torch.int8).argmax())] = True
    while True:
        wider = grown.clone()
        wider[1:] |= grown[:-1]
        wider[:-1] |= grown[1:]
        wider[:, 1:] |= grown[:, :-1]
        wider[:, :-1] |= grown[:, 1:]
        wider &= region
        if torch.equal(wider, grown):
            return bool(torch.equal(grown, region))
        grown = wider


def _rectangle(weights: torch.Tensor) -> tuple[tuple[int, int, int, int], float] | None:
    """((r0, r1, c0, c1), v) where weights [h, w] are v != 0 on rows r0:r1 and columns c0:c1 and 0 elsewhere, with
    v a whole number; else None."""
    inside = weights != 0
    rows, cols = inside.any(dim=1).nonzero(), inside.any(dim=0).nonzero()
    if len(rows) == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    value = float(weights[r0, c0])
    if value != round(value) or int(inside.sum()) != (r1 - r0) * (c1 - c0):
        return None
    if not bool((weights[r0:r1, c0:c1] == value).all()):
        return None
    return (r0, r1, c0, c1), value


def _rectangles(weights: torch.Tensor) -> list[tuple[tuple[int, int, int, int], float]] | None:
    """:func:`_rectangle` of every template's weights [1, Tm, 1, h, w], or None as soon as one is not a rectangle
    (a turned footprint fails at its first template)."""
    found = []
    for t in range(weights.shape[1]):
        rectangle = _rectangle(weights[0, t, 0])
        if rectangle is None:
            return None
        found.append(rectangle)
    return found


@dataclass(frozen=True)
class AreaSumReductions(TapReductions):
    """Tap reductions whose window sums and ranges take O(H·W) (unmasked) or O(H·W·log) (masked, FFT) instead of
    O(H·W·h·w).

    Attributes:
        chunk_bytes: Bytes that the spectra of one chunk of templates (or weights) may use.
        spectra: Whole-image spectra kept between calls while a bank streams through (None: not kept).
    """

    chunk_bytes: int = 64 * 2**20
    spectra: dict | None = None
    cumulative_window_sums = True  # unmasked window sums come from summed-area tables or running sums
    spreads_nan = True  # so do FFTs: the scoring code fills NaN pixels first and marks their windows after

    @property
    def unfold_bytes(self) -> int:
        """Bytes of float64 windows that conv2d may unfold at a time: chunk_bytes, at most UNFOLD_BUDGET (as
        :func:`slidesim.kernels.conv.unfold_budget` counts them)."""
        return max(1, min(UNFOLD_BUDGET, self.chunk_bytes))

    def for_stream(self) -> AreaSumReductions:
        """A copy that keeps whole-image spectra between the chunks of a streamed bank."""
        return dataclasses.replace(self, spectra={})

    def _fused(self, plane: torch.Tensor) -> bool:
        return (
            not plane.requires_grad
            and plane.device.type == "cpu"
            and self.geom.dilation == (1, 1)
            and fused_statistics_available()
        )

    def _run_fused(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        deviations: bool,
        tolerance: float,
        out: np.ndarray,
        factors,
        size: tuple[int, int] | None = None,
    ) -> int:
        """Run the numba pass over windows of ``size`` (default: the template's) into ``out`` ([B, H', W']
        float64) or, when ``factors`` is not empty, into it."""
        from .numba_windows import window_squares

        geom = self.geom
        # A few tasks per thread balance the load; fewer, taller bands re-sum fewer first windows.
        rows_per_task = max(8, -(-geom.out_height * plane.shape[0] // (4 * numba_threads())))
        image = plane.detach()[:, 0].contiguous().numpy()
        shifts = shift.detach().to(torch.float64).reshape(-1).contiguous().numpy()
        size, stride = size or geom.template_size, geom.stride
        return int(window_squares(image, shifts, *size, *stride, deviations, rows_per_task, tolerance, out, factors))

    def window_squares(self, plane: torch.Tensor, shift: torch.Tensor, deviations: bool) -> torch.Tensor | None:
        """Σ (I − s)², minus (Σ (I − s))² / n with ``deviations`` (n · variance), over every unmasked window of
        plane [B, 1, Hp, Wp] with shift [B, 1, 1, 1] -> [B, 1, H', W'] float64, in one numba pass; None (the
        scoring code then combines summed-area box sums) without numba, off the CPU, with dilation, or when a
        gradient is needed."""
        if not self._fused(plane):
            return None
        out = torch.empty(plane.shape[0], 1, self.geom.out_height, self.geom.out_width, dtype=torch.float64)
        self._run_fused(plane, shift, deviations, 0.0, out[:, 0].numpy(), _NO_FACTORS)
        return out

    def rectangle_squares(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        weights: torch.Tensor,
        tolerance: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor | None:
        """Σ (I − s)² minus (Σ (I − s))² / n (n · variance) over every window of plane [B, 1, Hp, Wp] with shift
        [B, 1, 1, 1] under weights [1, Tm, 1, h, w] that are 1 on a rectangle and 0 elsewhere (a scaled
        template's footprint on its canvas) -> [B, Tm, H', W'] float64: the fused unmasked pass over each
        rectangle's windows, one pass per template. Given a ``tolerance``, 1/√ of those values in ``dtype``
        instead, 0 where a value is at or below it (flat, when the sums are exact). None where the fused pass
        cannot run or some weights are not such a rectangle.

        A scale search's footprints are such rectangles: their moments took a dozen full-size passes per scale
        from summed-area tables (corners, differences, squares, the spread, the inverse root)."""
        if not self._fused(plane) or weights.shape[0] != 1 or weights.shape[2] != 1 or weights.requires_grad:
            return None
        rectangles = _rectangles(weights)
        if rectangles is None or any(value != 1.0 for _, value in rectangles):
            return None
        B, (Ho, Wo) = plane.shape[0], (self.geom.out_height, self.geom.out_width)
        inverse = tolerance is not None
        # each template's maps contiguous, as the kernel writes them
        out = torch.empty(len(rectangles), B, Ho, Wo, dtype=dtype if inverse else torch.float64)
        for t, ((r0, r1, c0, c1), _) in enumerate(rectangles):
            window = plane[..., r0:, c0:]  # the rectangle's top-left tap at every window's origin
            into = (_NO_OUT, out[t].numpy()) if inverse else (out[t].numpy(), _NO_FACTORS)
            self._run_fused(window, shift, True, tolerance or 0.0, *into, size=(r1 - r0, c1 - c0))
        return out.transpose(0, 1) if B == 1 else out.transpose(0, 1).contiguous()

    def plane_energy(self, plane: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
        """Σ (I − s)² of each image of plane [B, 1, Hp, Wp] with shift [B, 1, 1, 1] -> [B] float64, in one numba
        pass; None where the fused pass cannot run (the scoring code then sums float64 pieces)."""
        if plane.device.type != "cpu" or not fused_statistics_available():
            return None
        from .numba_windows import plane_energies

        numba_threads()
        image = plane.detach()[:, 0].contiguous().numpy()
        shifts = shift.detach().to(torch.float64).reshape(-1).contiguous().numpy()
        return torch.from_numpy(plane_energies(image, shifts))

    def window_factors(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        tolerance: float,
        dtype: torch.dtype,
        exact: bool = False,
        deviations: bool = True,
    ) -> torch.Tensor | None:
        """1/√(window variance × n) of plane − shift ([B, 1, Hp, Wp], [B, 1, 1, 1]) for every unmasked window,
        [B, 1, H', W'] in ``dtype``, in one numba pass; None where the fused pass cannot run or where some window's
        variance is within ``tolerance`` (it may be flat: the caller then runs the exact test). With ``exact`` (the
        sums are exact, so windows within ``tolerance`` are flat) those windows get the factor 0 instead. Without
        ``deviations``, of the energy Σ (I − s)² (ncc's window factor, with s = 0)."""
        if not self._fused(plane):
            return None
        factors = torch.empty(plane.shape[0], 1, self.geom.out_height, self.geom.out_width, dtype=dtype)
        low = self._run_fused(plane, shift, deviations, tolerance, _NO_OUT, factors[:, 0].numpy())
        return factors if low == 0 or exact else None

    def window_sum(self, plane: torch.Tensor, weights: torch.Tensor | None, exact_zeros: bool = True) -> torch.Tensor:
        """Σ over each window of plane [B, C', Hp, Wp] (channels summed) -> [B, 1, H', W'].

        Weighted sums use conv2d when ``exact_zeros``: a window of zeros must then sum to exactly zero, which
        decides the degenerate cases of ncc and ssd_normed. Otherwise (zncc's moments, whose degenerate windows
        the exact flat test decides) they use a float64 FFT, whose error is within the flat test's rounding bound.
        """
        if weights is not None:
            rectangle = self._rectangle_sums(plane, weights)
            if rectangle is not None:
                return rectangle
            if not exact_zeros:
                return fft_correlate(plane, weights, self.geom, self.chunk_bytes, spectra=self.spectra)
            return self.window_sum_bounded(plane, weights)[0]
        return channel_box_sums(plane, self.geom)

    def _rectangle_sums(self, plane: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """Σ weights · plane over each window -> [B, Tm, H', W'] float64, exactly, where every template's weights
        [1, Tm, 1, h, w] are one value on a rectangle and 0 elsewhere (a scaled template's footprint on its
        canvas) and plane [B, 1, Hp, Wp] holds integers whose summed-area table stays below 2^53: box sums of the
        rectangle (summed-area tables, O(H·W)) times the value. None otherwise.

        A scale search's footprints are such rectangles: their masked window sums took two float64 transforms per
        scale (9 scales of a 64² template on a 1024² photograph: 0.30 s against a cv2 resize and match loop's
        0.13 s).
        """
        shapes_fit = weights.shape[0] == 1 and weights.shape[2] == 1 and plane.shape[1] == 1
        if not shapes_fit or plane.requires_grad or weights.requires_grad or plane.device.type != "cpu":
            return None
        rectangles = _rectangles(weights)
        if rectangles is None:
            return None
        values, table = self._integer_table(plane)
        if values is None:
            return None
        (dy, dx), (sy, sx) = self.geom.dilation, self.geom.stride
        count = (self.geom.out_height, self.geom.out_width)
        out = values.new_empty(values.shape[0], len(rectangles), *count)
        for t, ((r0, r1, c0, c1), value) in enumerate(rectangles):
            if table is None:
                out[:, t : t + 1] = box_sums(values[..., r0 * dy :, c0 * dx :], (r1 - r0, c1 - c0), self.geom, count)
            else:
                rows = [slice(r, r + (count[0] - 1) * sy + 1, sy) for r in (r0, r1)]
                cols = [slice(c, c + (count[1] - 1) * sx + 1, sx) for c in (c0, c1)]
                box = out[:, t : t + 1]
                torch.sub(table[..., rows[1], cols[1]], table[..., rows[0], cols[1]], out=box)
                box -= table[..., rows[1], cols[0]]
                box += table[..., rows[0], cols[0]]
            if value != 1.0:
                out[:, t : t + 1] *= value
        return out

    def _masked_flat(self, plane: torch.Tensor, support: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        """:meth:`window_flat` under connected supports [Bm, Tm, 1, h, w]: no neighbouring pair inside the support
        differs."""
        (dy, dx) = self.geom.dilation
        plane = plane.detach()
        inside = support.to(torch.float64)
        changes = None
        along_rows, along_columns = _neighbour_changes(plane, (dy, dx))
        if inside.shape[-1] > 1:  # pairs along rows: both taps inside
            pairs = inside[..., :, 1:] * inside[..., :, :-1]
            changes = self.window_sum_bounded(along_rows.to(torch.float64), pairs)[0]
        if inside.shape[-2] > 1:  # and along columns
            pairs = inside[..., 1:, :] * inside[..., :-1, :]
            part = self.window_sum_bounded(along_columns.to(torch.float64), pairs)[0]
            changes = part if changes is None else changes + part
        r0, r1 = rows if rows is not None else (0, self.geom.out_height)
        if changes is None:  # one tap: always flat
            return torch.ones(plane.shape[0], support.shape[1], r1 - r0, self.geom.out_width, dtype=torch.bool)
        return changes[:, :, r0:r1] < 0.5  # exact counts of 0/1 pairs

    def _integer_table(self, plane: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(plane [B, 1, Hp, Wp] in float64, its summed-area table where undilated, else None) when every value is
        an integer and the table's sums stay exact (below 2^53), else (None, None). Kept with the spectra of a
        streamed bank: each chunk of templates asks again for the same planes (9 scales: 10 tables -> 2)."""
        key = ("integral table", id(plane))
        if self.spectra is not None and key in self.spectra:
            return self.spectra[key][1]
        values = plane.detach().to(torch.float64)
        exact = float(values.abs().amax()) * values.shape[-2] * values.shape[-1] < 2.0**53
        found: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if exact and bool(torch.equal(values, torch.round(values))):
            found = (values, integral_table(values) if self.geom.dilation == (1, 1) else None)
        # kept (the entry holds the plane, so its id is not reused while the entry exists) only while small beside
        # the spectra's share of memory_limit
        if self.spectra is not None and 8 * values.numel() <= self.chunk_bytes // 4:
            self.spectra[key] = (plane, found)
        return found

    def window_sum_bounded(self, plane: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(Σ weights · plane over each window -> [B, Tm, H', W'] with exact zeros, as :meth:`window_sum` has
        them; a bound on any window's rounding error). plane [B, C', Hp, Wp], weights [Bm, Tm, C', h, w]."""
        rectangle = self._rectangle_sums(plane, weights)
        if rectangle is not None:
            return rectangle, 0.0
        taps = weights.shape[-2] * weights.shape[-1]
        if taps > FFT_EXACT_TAPS and not plane.requires_grad and not weights.requires_grad:
            return self._sums_with_exact_zeros(plane, weights)
        sums = conv_correlate(plane, weights, self.geom, self.unfold_bytes)
        return sums, tap_sums_rounding_bound(plane, weights)

    def _sums_with_exact_zeros(self, plane: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Σ weights · plane by a float64 FFT, with tap sums' guarantees: a window of zeros sums to exactly 0 and
        every window is accurate relative to its own terms. plane [B, C', Hp, Wp], weights [Bm, Tm, C', h, w]
        -> [B, Tm, H', W'] float64.

        The transform errs by at most e = 8·ε·log2(n)·‖plane‖₂·‖weights‖₂ anywhere. Integer planes and weights
        (window sums below 2^53) with e < 1/4: each sum is rounded to its integer, exactly (with a larger e, conv2d
        sums them). Otherwise the windows whose |sum| is within e / 1e-10 are summed again tap by tap (the dark
        windows of a photograph: few).

        Returns:
            The sums, and a bound on any window's rounding error: 0 for exact integers, else e (or the tap sums'
            bound, where some windows were summed tap by tap and it is larger).
        """
        plane64, weights64 = plane.to(torch.float64), weights.to(torch.float64)
        Hf, Wf = transform_size(*plane.shape[-2:])
        eps = torch.finfo(torch.float64).eps
        error = (
            8
            * eps
            * math.log2(max(2, Hf * Wf))
            * float(plane64.flatten(1).norm(dim=1).max())
            * float(weights64.flatten(2).norm(dim=2).max())
        )
        integers = bool(torch.equal(plane64, plane64.round())) and bool(torch.equal(weights64, weights64.round()))
        integers = (
            integers and float(plane64.abs().amax()) * float(weights64.abs().sum(dim=(-3, -2, -1)).max()) < 2.0**53
        )
        if integers and error >= 0.25:  # too bright or too large to round a transform to the exact integers
            return conv_correlate(plane, weights, self.geom, self.unfold_bytes), 0.0
        sums = fft_correlate(plane64, weights64, self.geom, self.chunk_bytes, spectra=self.spectra)
        if integers:
            return sums.round_(), 0.0
        doubtful = sums.abs() <= error / _KEPT_FRACTION
        if bool(doubtful.any()):
            index = doubtful.nonzero()
            sums[tuple(index.unbind(dim=1))] = self._tap_sums(plane64, weights64, index)
            return sums, max(error, tap_sums_rounding_bound(plane64, weights64))
        return sums, error

    def _tap_sums(self, plane: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Σ weights · plane of the windows at index [n, 4] (b, t, y, x), tap by tap in float64 -> [n]: read in
        place by the numba kernel of :mod:`slidesim.kernels.numba_rescore` on the CPU (about 1 ns a tap; gathering
        the windows took 17), else gathered."""
        if plane.device.type == "cpu" and fused_statistics_available():
            from .numba_rescore import scores_in_place

            return scores_in_place(plane, weights, None, index, 0, self.geom, "ccorr")  # Σ 1 · weights · plane
        step = max(1, _EXACT_SUMS_BYTES // (2 * weights[0, 0].numel() * 8))
        parts = []
        for start in range(0, len(index), step):
            b, t, y, x = index[start : start + step].unbind(dim=1)
            windows = gather_windows(plane, b, y, x, self.geom)
            taps = weights[b if weights.shape[0] > 1 else torch.zeros_like(b), t if weights.shape[1] > 1 else 0]
            parts.append((windows * taps).sum(dim=(-3, -2, -1)))
        return torch.cat(parts)

    def window_flat(
        self, plane: torch.Tensor, support: torch.Tensor | None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """True where all values of plane [B, 1, Hp, Wp] in a window are equal -> [B, 1, r1 - r0, W'] bool for
        output rows r0:r1 (default all).

        A window is flat exactly when no two neighbouring taps differ, along rows and along columns; counting the
        differing neighbour pairs is an integer box sum, exact and O(H·W). A masked window likewise when its
        support is connected (a disk, a turned rectangle): the pairs of neighbours inside the support are 0/1
        weights, and their exact window sums count the differing ones (two transforms in place of a min and a max
        per tap: 1 s for a 40² disk on a 1080p screenshot). Other supports use the direct loop.
        """
        if support is not None:
            if not bool(_connected(support[:, :, 0]).all()):
                return super().window_flat(plane, support, rows)
            return self._masked_flat(plane, support, rows)
        geom = self.geom
        (h, w), (dy, dx), sy = geom.template_size, geom.dilation, geom.stride[0]
        r0, r1 = rows if rows is not None else (0, geom.out_height)
        span = dy * (h - 1) + 1
        plane = plane.detach()[..., r0 * sy : (r1 - 1) * sy + span, :]  # only the rows these windows cover
        out = (r1 - r0, geom.out_width)
        changes = torch.zeros(plane.shape[0], 1, *out, dtype=torch.float64, device=plane.device)  # exact counts
        along_rows, along_columns = _neighbour_changes(plane, (dy, dx))
        if w > 1:
            changes += box_sums(along_rows, (h, w - 1), geom, out)
        if h > 1:
            changes += box_sums(along_columns, (h - 1, w), geom, out)
        return changes == 0
