"""What the scoring code asks of an engine (floor L3): the sliding reductions of :class:`Primitives`.

:class:`slidesim.kernels.taps.TapReductions` implements all of them by tap loops; the engines replace some with
faster kernels. Shapes: images [B, C, Hp, Wp] (padded), kernels and templates [Bk, T, C, h, w], weights and
supports [Bm, Tm, Cm, h, w], outputs [B, T or Tm, H', W'].
"""

from __future__ import annotations

from typing import Protocol

import torch

from .._geometry import Geometry


class Primitives(Protocol):
    """Sliding reductions an engine provides.

    Attributes:
        geom: Where the windows are.
        spreads_nan: Whether the sums carry a NaN beyond its windows (FFTs, cumulative sums): the scoring code
            then fills NaN pixels first and marks their windows after (:mod:`slidesim.scoring.holes`).
        cumulative_window_sums: Whether unmasked window sums come from cumulative sums, whose round-off scales
            with the image rather than with the window.
        global_cross_error: Whether the cross term's round-off spreads over every output (transforms) rather
            than staying per window.
        squares_by_correlation: Whether ssd's Σ W (I − T)² is best taken from a float64 correlation and window
            energies (transforms, whose cost does not grow with the template) rather than tap by tap.
    """

    geom: Geometry
    spreads_nan: bool
    cumulative_window_sums: bool
    global_cross_error: bool
    squares_by_correlation: bool

    def for_stream(self) -> Primitives:
        """The reductions to use while a bank streams through in chunks (may cache per image)."""
        ...

    def correlate(
        self,
        image: torch.Tensor,
        kernel: torch.Tensor,
        support: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image -> [B, T, H', W'] in ``out_dtype`` (None: the kernel's); ``support`` (bool,
        None: every tap) says which taps are in each template's window, which matters where the image holds NaN or
        inf. An engine that computes in a wider dtype writes its result narrowed as it goes where it can (the FFT
        engine's tiles), instead of a second pass over a wide copy."""
        ...

    def correlate_centred(
        self,
        image: torch.Tensor,
        shift: torch.Tensor,
        kernel: torch.Tensor,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor | None:
        """Σ_c Σ_taps kernel · (image − shift_c) of a finite image, shift [B, C, 1, 1], computed in the kernel's
        dtype -> [B, T, H', W'] in ``out_dtype`` (None: the kernel's), centring and widening the image as it is
        read; None where the engine has no such path (the caller then centres copies of a few channels at a
        time)."""
        ...

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps w · |image − template|^power -> [B, T, H', W'], the short way round for circular channels."""
        ...

    def window_sum(self, plane: torch.Tensor, weights: torch.Tensor | None, exact_zeros: bool = True) -> torch.Tensor:
        """Σ_taps weights · plane with channels summed -> [B, Tm, H', W'] (None: an unweighted box); a window of
        zeros sums to exactly zero when ``exact_zeros``."""
        ...

    def window_sum_bounded(self, plane: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(:meth:`window_sum` of plane [B, C', Hp, Wp] under weights [Bm, Tm, C', h, w] with exact zeros; a bound
        on any window's rounding error)."""
        ...

    def window_flat(
        self, plane: torch.Tensor, support: torch.Tensor | None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """True where all values of plane [B, 1, Hp, Wp] under a window's support are equal -> bool
        [B, Tm, r1 − r0, W'] for output rows r0:r1 (default all)."""
        ...

    def window_squares(self, plane: torch.Tensor, shift: torch.Tensor, deviations: bool) -> torch.Tensor | None:
        """Σ (I − s)² over every unmasked window of plane [B, 1, Hp, Wp] with shifts [B, 1, 1, 1], or with
        ``deviations`` the sum of squared deviations from the window mean (n · variance) -> [B, 1, H', W']
        float64 in one fused pass; None where the engine has no fused pass."""
        ...

    def window_factors(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        tolerance: float,
        dtype: torch.dtype,
        exact: bool = False,
        deviations: bool = True,
    ) -> torch.Tensor | None:
        """1/√(n · variance) of every unmasked window in one fused pass -> [B, 1, H', W'] in ``dtype``; None where
        there is no fused pass or some window's n · variance is within ``tolerance`` (it may be flat). With
        ``exact`` (sums known to be exact) windows within ``tolerance`` are flat and get the factor 0. Without
        ``deviations``, of the energy Σ (I − s)² instead of n · variance."""
        ...

    def rectangle_squares(
        self,
        plane: torch.Tensor,
        shift: torch.Tensor,
        weights: torch.Tensor,
        tolerance: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor | None:
        """:meth:`window_squares` with ``deviations`` over the windows of weights [1, Tm, 1, h, w] that are 1 on a
        rectangle and 0 elsewhere -> [B, Tm, H', W'] float64, the fused pass run over each rectangle; given a
        ``tolerance``, :meth:`window_factors` of them instead (in ``dtype``, 0 at or below it). None where there
        is no fused pass or some weights are not such a rectangle."""
        ...

    def plane_energy(self, plane: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
        """Σ (I − s)² of each image -> [B] float64 in one fused pass; None where there is none."""
        ...
