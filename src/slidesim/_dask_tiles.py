"""How slidesim cuts a dask array into chunks it can score (floor L7, beside :mod:`slidesim.dask`).

Every window of every metric depends only on the pixels it covers, so each chunk is scored on its own pixels plus
a halo of the template's span below and to the right (an asymmetric overlap: a window belongs to the chunk that
holds its top-left pixel), and the score chunks line up with the image chunks. "same" and "full" modes pad the dask
array first with the core's own index maps, so every padding and pad width gives the in-memory numbers. This
module holds the tiling and the per-chunk work; :mod:`slidesim.dask` holds the public calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_sample_depths
from ._geometry import NUMPY_PAD_MODES, pad_amounts
from ._similarity import similarity as similarity_in_memory
from ._validate import DEFAULT_OPTIONS, Canonical, canonicalize
from .banks import TransformStream
from .errors import SlidesimTypeError
from .matching import best_of_stream, check_working_set


def dask_array():
    try:
        import dask.array
    except ImportError as error:  # pragma: no cover - the test extras install dask
        raise ImportError("slidesim.dask needs dask: pip install 'slidesim[dask]'") from error
    return dask.array


def as_dask(images: object):
    da = dask_array()
    if isinstance(images, da.Array):
        return images
    images = host(images)
    if isinstance(images, np.ndarray):
        return da.from_array(images)
    raise SlidesimTypeError(f"`images` must be a dask array (or a numpy array or tensor); got {type(images).__name__}.")


def shape_only(images) -> torch.Tensor:
    """A meta tensor with the dask array's shape and the torch dtype the core would give it (no data)."""
    dtype = np.dtype(images.dtype)
    if dtype == np.uint16:
        dtype = np.dtype(np.float32)  # as the core converts numpy uint16
    try:
        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    except TypeError:
        torch_dtype = None
    if torch_dtype is None or dtype.kind not in "biuf":
        canonicalize(np.zeros((1, 1), dtype=images.dtype), np.zeros((1, 1)), **DEFAULT_OPTIONS)  # the core's error
        raise SlidesimTypeError(f"`images` has an unsupported dtype {images.dtype}.")
    return torch.empty(images.shape, dtype=torch_dtype, device="meta")


def host(value: object) -> object:
    """Tensors -> numpy on the host; anything else as it is."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def validated(images, templates: object, options: dict[str, Any]) -> tuple[Canonical, Canonical]:
    """The core's checks and canonical layout: (shapes from the dask array, which is never read here; the same
    call on a tiny image, whose canonical templates and mask hold the real values, checked by the core)."""
    templates = host(templates)
    check_sample_depths(images, templates)  # the meta image below has the core's dtype, not the array's
    options = {**options, "mask": host(options["mask"])}
    canon = canonicalize(shape_only(images), templates, **options)
    problem = canon.problem
    dy, dx = canon.dilation
    span = (dy * (problem.template_height - 1) + 1, dx * (problem.template_width - 1) + 1)
    tiny = np.zeros(span if canon.two_d else (problem.batch, problem.channels, *span), dtype=np.float32)
    values = canonicalize(tiny, templates, **{**options, "mode": "valid", "stride": 1})
    return canon, values


def at_least(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until each holds at least ``depth`` elements (the whole axis if it is shorter),
    so that every chunk's halo comes from its next neighbour alone."""
    merged: list[int] = []
    for size in chunks:
        if merged and merged[-1] < depth:
            merged[-1] += size
        else:
            merged.append(size)
    if len(merged) > 1 and merged[-1] < depth:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged)


def starts(chunks: tuple[int, ...]) -> list[int]:
    return [0, *np.cumsum(chunks)[:-1].tolist()]


def outputs_per_chunk(chunks: tuple[int, ...], stride: int, out_size: int) -> tuple[int, ...]:
    """Outputs whose window starts in each chunk: y with y·stride in [start, start + size), y < out_size."""
    counts = []
    for start, size in zip(starts(chunks), chunks, strict=True):
        first = math.ceil(start / stride)
        last = min(math.ceil((start + size) / stride), out_size)
        counts.append(max(0, last - first))
    return tuple(counts)


def pad(images, canon: Canonical):
    """Pad a [B, C, H, W] dask array for the call's mode exactly as the core pads tensors."""
    da = dask_array()
    h, w = canon.templates.shape[-2:]
    H, W = images.shape[-2:]
    top, bottom = pad_amounts(canon.mode, H, h, canon.dilation[0])
    left, right = pad_amounts(canon.mode, W, w, canon.dilation[1])
    if not any((top, bottom, left, right)):
        return images
    if canon.padding == "constant":
        dtype = np.float64 if canon.out_dtype == torch.float64 else np.float32
        return da.pad(
            images.astype(dtype),
            ((0, 0), (0, 0), (top, bottom), (left, right)),
            mode="constant",
            constant_values=canon.pad_value,
        )
    mode = NUMPY_PAD_MODES[canon.padding]
    rows = np.pad(np.arange(H), (top, bottom), mode=mode)
    cols = np.pad(np.arange(W), (left, right), mode=mode)
    return images[:, :, rows, :][:, :, :, cols]


def sliced(templates: np.ndarray, mask: np.ndarray | None, per_image: bool, b0: int, count: int):
    """The bank and mask of images b0 .. b0 + count (per-image banks), or the shared ones."""
    if not per_image:
        return templates, mask
    if mask is not None and mask.ndim == 5 and mask.shape[0] > 1:
        mask = mask[b0 : b0 + count]
    return templates[b0 : b0 + count], mask


@dataclass(frozen=True)
class Tiling:
    """How a padded [B, C, Hp, Wp] dask array is cut: core chunks, and the outputs whose windows start in each."""

    overlapped: Any  # the dask array: every chunk with the template's halo below and to the right
    padded: Any  # the dask array padded for the mode, without the halo
    batch_starts: list[int]
    row_starts: list[int]
    col_starts: list[int]
    out_rows: tuple[int, ...]
    out_cols: tuple[int, ...]
    batch_chunks: tuple[int, ...]


def tile(images, canon: Canonical) -> Tiling:
    """Pad [B, C, H, W] images for the call's mode and overlap every chunk with the template span's halo."""
    da = dask_array()
    problem = canon.problem
    images = pad(images.rechunk({1: -1}), canon)
    (sy, sx), (dy, dx) = canon.stride, canon.dilation
    h, w = canon.templates.shape[-2:]
    halo_h, halo_w = dy * (h - 1), dx * (w - 1)
    images = images.rechunk(
        {2: at_least(images.chunks[2], max(1, halo_h)), 3: at_least(images.chunks[3], max(1, halo_w))}
    )
    depth = {0: 0, 1: 0, 2: (0, halo_h), 3: (0, halo_w)}
    return Tiling(
        overlapped=da.overlap.overlap(images, depth=depth, boundary="none"),
        padded=images,
        batch_starts=starts(images.chunks[0]),
        row_starts=starts(images.chunks[2]),
        col_starts=starts(images.chunks[3]),
        out_rows=outputs_per_chunk(images.chunks[2], sy, problem.out_height),
        out_cols=outputs_per_chunk(images.chunks[3], sx, problem.out_width),
        batch_chunks=images.chunks[0],
    )


def core_windows(block: np.ndarray, location: tuple[int, ...], tiling: Tiling, canon_shape: dict) -> np.ndarray:
    """The part of a block whose valid windows are exactly the windows starting in its core, on the stride grid."""
    _, _, iy, ix = location
    ny, nx = tiling.out_rows[iy], tiling.out_cols[ix]
    (sy, sx), (span_h, span_w) = canon_shape["stride"], canon_shape["span"]
    oy, ox = (-tiling.row_starts[iy]) % sy, (-tiling.col_starts[ix]) % sx
    piece = block[:, :, oy : oy + (ny - 1) * sy + span_h, ox : ox + (nx - 1) * sx + span_w]
    return np.ascontiguousarray(piece)


def window_span(canon: Canonical) -> dict:
    (dy, dx), (h, w) = canon.dilation, canon.templates.shape[-2:]
    return {"stride": canon.stride, "span": (dy * (h - 1) + 1, dx * (w - 1) + 1)}


def score_block(
    block: np.ndarray,
    block_info: dict | None = None,
    *,
    tiling: Tiling,
    geometry: dict,
    templates: np.ndarray,
    mask: np.ndarray | None,
    per_image: bool,
    out_shape: tuple[int, ...],
    out_dtype: np.dtype,
    options: dict[str, Any],
) -> np.ndarray:
    """Scores of the windows whose top-left pixel lies in this chunk's core (the block holds the core and the
    halo below and to the right)."""
    location = block_info[0]["chunk-location"]
    ny, nx = tiling.out_rows[location[2]], tiling.out_cols[location[3]]
    shape = (block.shape[0], *out_shape, ny, nx)
    if ny == 0 or nx == 0:
        return np.zeros(shape, dtype=out_dtype)
    bank, weights = sliced(templates, mask, per_image, tiling.batch_starts[location[0]], block.shape[0])
    piece = core_windows(block, location, tiling, geometry)
    scores = similarity_in_memory(piece, bank, **{**options, "mask": weights})
    return np.asarray(scores, dtype=out_dtype).reshape(shape)


def out_dtype(canon: Canonical) -> np.dtype:
    return np.dtype(np.float64 if canon.out_dtype == torch.float64 else np.float32)


def bank_layout(values: Canonical, stream: TransformStream | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Meta tensors with the shapes of the (transformed) bank and its mask, as the core takes them: the bank's
    geometry without drawing it."""
    templates, mask = values.templates, values.mask
    if stream is not None:
        Bk, _, C = templates.shape[:3]
        Bm, Cm = stream.mask_planes
        templates = torch.empty(Bk, stream.members, C, *stream.canvas, device="meta")
        mask = torch.empty(Bm, stream.members, Cm, *stream.canvas, device="meta")
    templates = templates[0] if templates.shape[0] == 1 else templates
    mask = None if mask is None else (mask[0] if mask.shape[0] == 1 else mask)
    return templates.to("meta"), None if mask is None else mask.to("meta")


def best_block(
    block: np.ndarray,
    block_info: dict | None = None,
    *,
    tiling: Tiling,
    geometry: dict,
    templates: torch.Tensor,
    mask: torch.Tensor | None,
    angles: list[float] | None,
    scales: list[float] | None,
    out_dtype: np.dtype,
    options: dict[str, Any],
) -> np.ndarray:
    """[b, T, 2, ny, nx]: the best score over the transformed bank and the index of its transform (exact in
    float32 below 2²⁴ transforms), for the windows starting in this chunk's core (as :func:`slidesim.match` folds
    the bank in memory, drawing it a chunk at a time within ``memory_limit``), in the scores' dtype; ``templates``
    and ``mask`` are the canonical untransformed bank and mask, ``angles`` and ``scales`` None when not searched."""
    location = block_info[0]["chunk-location"]
    ny, nx = tiling.out_rows[location[2]], tiling.out_cols[location[3]]
    n_templates = templates.shape[1]
    out = np.zeros((block.shape[0], n_templates, 2, ny, nx), dtype=out_dtype)
    if ny == 0 or nx == 0:
        return out
    bank, weights = bank_of(templates, mask, tiling.batch_starts[location[0]], block.shape[0])
    piece = core_windows(block, location, tiling, geometry)
    best, which = best_maps(piece, bank, weights, angles, scales, options)
    out[:, :, 0] = best.numpy()
    out[:, :, 1] = which.numpy()
    return out


def best_maps(
    piece: np.ndarray,
    bank: torch.Tensor,
    weights: torch.Tensor | None,
    angles: list[float] | None,
    scales: list[float] | None,
    options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score [b, T, ny, nx], index of its transform [b, T, ny, nx]) of every valid window of a piece of the
    padded images over the (rotated, scaled) bank, folded as :func:`slidesim.match` folds it in memory."""
    canon = canonicalize(piece, bank, **{**options, "mask": weights})
    stream = None
    if angles is not None or scales is not None:
        angles, scales = angles or [0.0], scales or [1.0]
        check_working_set(canon, angles, scales)
        stream = TransformStream(canon.templates, canon.mask, angles, scales)
    best, which, _ = best_of_stream(canon, stream, None)
    return best, which


def bank_of(templates: torch.Tensor, mask: torch.Tensor | None, b0: int, count: int):
    """The canonical bank [T, C, h, w] (or [count, T, C, h, w] per image) and mask of images b0 .. b0 + count."""
    bank = templates[b0 : b0 + count] if templates.shape[0] > 1 else templates[0]
    if mask is not None:
        mask = mask[b0 : b0 + count] if mask.shape[0] > 1 else mask[0]
    return bank, mask
