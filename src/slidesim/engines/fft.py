"""The FFT engine (floor L4): the cross term of the correlation metrics through torch.fft.

The image spectrum is computed once per call and reused for every template of the bank; channels are summed in
the frequency domain, so one inverse transform yields each template's map. Transform sizes are products of 2, 3,
5 and 7; overlap-save tiles take the whole transform's place on large images (faster: their temporaries stay in
cache) and when the whole spectrum would not fit ``memory_limit`` (:mod:`slidesim.kernels.spectral`). Window
statistics come from :mod:`slidesim.kernels.area_sums`; the cross term of ccoeff and zncc correlates the centred
image with the mean-removed template, which keeps the float32 transform's round-off small against the window's own
variation. Best for single templates and large ones. ssd and ssd_normed come from window energies and a float64
cross term (:mod:`slidesim.scoring.correlation`), whose cost does not grow with the template as the tap loops' does.
"""

from __future__ import annotations

import math

import torch

from .._validate import Canonical, Problem, geometry
from ..kernels.area_sums import AreaSumReductions
from ..kernels.spectral import (
    choose_tile,
    fft_correlate,
    template_chunk,
    tile_count,
    tile_spectra_bytes,
    transform_size,
)
from ..kernels.taps import block_elements
from . import counts
from .base import ReductionEngine, correlation_ineligible_reason


class FFTPrimitives(AreaSumReductions):
    """Correlations by FFT, the image spectrum shared by every template."""

    global_cross_error = True  # round-off spreads over every output: ε·‖I‖₂·‖K‖₂, not per window
    squares_by_correlation = True  # ssd from energies and a float64 cross term: its cost does not grow with h·w

    def correlate(
        self,
        image: torch.Tensor,
        kernel: torch.Tensor,
        support: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` is not needed: this engine runs finite images only, where the kernel's zero weights already
        leave those taps out.
        """
        del support
        return fft_correlate(image, kernel, self.geom, self.chunk_bytes, spectra=self.spectra, out_dtype=out_dtype)

    def correlate_centred(
        self,
        image: torch.Tensor,
        shift: torch.Tensor,
        kernel: torch.Tensor,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · (image − shift_c), shift [B, C, 1, 1], transformed in the kernel's dtype: each tile
        is centred and widened as it is read, and every channel shares the tile's one inverse transform."""
        return fft_correlate(
            image, kernel, self.geom, self.chunk_bytes, spectra=self.spectra, out_dtype=out_dtype, shift=shift
        )


SQUARED_DISTANCES = ("ssd", "ssd_normed")  # through energies and a float64 cross term
# A float64 transform costs this many float32 ones of the same size on the CPU: 1.1 to 2.0 measured with torch's
# FFT on 2 cores (512² 1.1, 448×176 1.3, 384² 1.7, 1080×1920 1.9, 600×400 2.0); 2 over-estimated every FFT ssd and
# ssd_normed call of the real-image suite by 1.5 to 1.6 times. GPUs keep 2 (their table was fitted with it).
FLOAT64_TRANSFORM_COST = {"cpu": 1.5, "cuda": 2.0}
CENTRED = ("ccoeff", "zncc", "ssd", "ssd_normed")  # cross terms of the image less its channel means


def transform_bytes(problem: Problem) -> int:
    """Bytes per value of the transforms: float64 for the squared distances, else the compute dtype's."""
    return 8 if problem.metric in SQUARED_DISTANCES else counts.item_size(problem)


def transform_plan(problem: Problem, memory_limit: int) -> tuple[tuple[int, int], int]:
    """Transform size and number of transforms per image: the whole image, or overlap-save tiles when its
    spectrum would not fit (as :func:`slidesim.kernels.spectral.fft_correlate` decides)."""
    item = transform_bytes(problem)
    Hp, Wp = counts.padded_size(problem)
    dy, dx = problem.dilation
    span = (dy * (problem.template_height - 1) + 1, dx * (problem.template_width - 1) + 1)
    shape = (problem.batch, problem.channels, Hp, Wp)
    tile = choose_tile(shape, span, problem.n_templates, item, memory_limit // 4, problem.stride)
    if tile is None:
        return transform_size(Hp, Wp), 1
    return tile, tile_count(tile, (Hp, Wp), span, problem.stride)


class FFTEngine(ReductionEngine):
    """Correlations by FFT, window statistics by area sums: correlation metrics of images without ±inf."""

    name = "fft"
    reads_narrow = True  # the transforms' tile reader and the statistics' passes widen as they read

    def ineligible_reason(self, problem: Problem) -> str | None:
        """Correlation metrics, ssd and ssd_normed on images without ±inf."""
        if problem.metric not in SQUARED_DISTANCES:
            return correlation_ineligible_reason(problem)
        if problem.circular:
            return "circular channels take the short way round tap by tap; a correlation cannot"
        if problem.requires_grad:
            return f"{problem.metric} with a gradient runs tap by tap (numba, direct)"
        if problem.nonfinite == "inf":
            return "the images contain ±inf, which an FFT or a cumulative sum would spread beyond their windows"
        return None

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """Image and kernel transforms, spectrum products, the area-sum statistics and the finish.

        Besides the arithmetic (n log n of each transform, the spectrum products), each transform and each tile
        costs a fixed overhead (torch's dispatch and planning, slicing the tile out and its outputs back), which
        dominates on small pictures and makes many small tiles cost more than their arithmetic. The kernels'
        transforms are pruned (their rows transform only the h rows that hold taps).
        """
        found = {**counts.call_counts(problem), **counts.area_sum_statistics(problem)}
        wide = counts.width_factor(problem)
        Hp, Wp = counts.padded_size(problem)
        if problem.metric in SQUARED_DISTANCES:  # float64 transforms, and the window energies
            wide = FLOAT64_TRANSFORM_COST["cpu" if problem.device == "cpu" else "cuda"]
            if problem.mask_kind == "none":
                energies = float(problem.batch * problem.channels * Hp * Wp)
                found["statistics_pixels"] = found.get("statistics_pixels", 0.0) + energies
            else:
                for name, value in counts.masked_energies(problem).items():
                    found[name] = found.get(name, 0.0) + value
            if problem.metric == "ssd":  # ssd_normed's one finish pass is counted with its statistics
                found["finished_outputs"] = found.get("finished_outputs", 0.0) + counts.outputs(problem)
        if problem.metric in CENTRED:  # the images' channel means (a pass over the image) centre the cross term
            found["centred_pixels"] = float(problem.batch * problem.channels * Hp * Wp)
        (Hf, Wf), tiles = transform_plan(problem, memory_limit)
        nlogn = Hf * Wf * math.log2(Hf * Wf)
        kernels = problem.n_templates * problem.channels * (problem.batch if problem.per_image_bank else 1)
        image_transforms = tiles * problem.batch * (problem.channels + problem.n_templates)
        found["image_transform_nlogn"] = image_transforms * nlogn * wide
        rows, columns = problem.template_height * Wf * math.log2(Wf), (Wf // 2 + 1) * Hf * math.log2(Hf)
        found["kernel_transform_nlogn"] = kernels * (rows + columns) * wide
        spectra = tiles * problem.batch * problem.n_templates * problem.channels * Hf * (Wf // 2 + 1)
        found["spectrum_products"] = spectra * wide
        bank_batch = problem.batch if problem.per_image_bank else 1
        item = transform_bytes(problem)
        chunk = template_chunk((Hf, Wf), problem.batch, bank_batch, problem.n_templates, item, memory_limit // 4)
        chunks = -(-problem.n_templates // chunk)
        found["transform_calls"] = float(chunks * (1 + 2 * tiles))  # kernels, then per tile forward and inverse
        return found

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """The area sums' temporaries, the image spectrum (every tile's, when they are kept for the later chunks
        of a bank) and one chunk of templates' spectra and maps."""
        item = transform_bytes(problem)
        (Hf, Wf), tiles = transform_plan(problem, memory_limit)  # the whole image, or overlap-save tiles
        spectrum = problem.batch * problem.channels * Hf * (Wf // 2 + 1) * 2 * item
        kept = tile_spectra_bytes((problem.batch, problem.channels), (Hf, Wf), tiles, item)
        if tiles > 1 and kept <= memory_limit // 4:  # as the tiles' reader keeps them (see fft_correlate)
            spectrum = kept
        bank_batch = problem.batch if problem.per_image_bank else 1
        chunk = template_chunk((Hf, Wf), problem.batch, bank_batch, problem.n_templates, item, memory_limit // 4)
        per_template = (bank_batch + problem.batch) * Hf * (Wf // 2 + 1) * 2 * item + problem.batch * Hf * Wf * item
        return counts.area_sum_bytes(problem, memory_limit) + spectrum + chunk * per_template

    def primitives(self, canon: Canonical, image: torch.Tensor) -> FFTPrimitives:
        """FFT correlations whose spectra fit a quarter of ``memory_limit``."""
        block = block_elements(canon.memory_limit, canon.out_dtype.itemsize)
        return FFTPrimitives(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)


ENGINE = FFTEngine()
