"""slidesim on Dask arrays (floor L7): images and collections larger than one machine, with the in-memory results.

Images are dask arrays (from zarr, tiled TIFF or anything else dask reads), chunked along any axis but channels;
templates and masks are small and in memory. Every window of every metric depends only on the pixels it covers,
so each chunk is scored by :func:`slidesim.similarity` on its own pixels plus a halo of the template's span
below and to the right (an asymmetric overlap: a window belongs to the chunk that holds its top-left pixel), and
the score chunks line up with the image chunks. Results equal the in-memory ones up to float32 round-off (the
normalized metrics centre each chunk by its own mean). "same" and "full" modes pad the dask array first with the
core's own index maps, so every padding and pad width gives the in-memory numbers.

Runs on any dask scheduler: the threaded one by default, or a dask.distributed cluster (``Client(...)``).
dask is an optional extra (``pip install "slidesim[dask]"``), imported only here.

Examples:
    >>> import dask.array as da, numpy as np
    >>> import slidesim.dask
    >>> image = da.from_array(np.random.default_rng(0).random((300, 280), dtype=np.float32), chunks=100)
    >>> template = image[120:131, 40:49].compute()
    >>> scores = slidesim.dask.similarity(image, template, metric="sad")
    >>> scores.shape, scores.chunks[0]
    ((290, 272), (100, 100, 90))
    >>> np.unravel_index(int(scores.argmin().compute()), scores.shape)
    (np.int64(120), np.int64(40))
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any

import numpy as np
import torch

from . import _dask_tiles as tiles
from ._refine import crop_window, refine_on_data
from ._types import ArrayLike
from ._validate import Canonical, canonicalize, options_of, window_origin, with_defaults
from .matching import Matches, bank_members, best_first, prepare

__all__ = ["match", "similarity"]


def similarity(images: object, templates: ArrayLike, **options: Any):
    """Score maps of a dask array of images, chunk by chunk: the in-memory :func:`slidesim.similarity` result.

    Args:
        images: dask array [H, W] (with a 2-D template) or [B, C, H, W], chunked along any axis; chunks along
            channels are merged (every window needs all channels). numpy arrays and tensors are wrapped.
        templates: In memory, as for :func:`slidesim.similarity`: [h, w], [T, C, h, w] or per-image banks
            [B, T, C, h, w].
        **options: The keyword options of :func:`slidesim.similarity` (metric, stride, dilation, mode, padding,
            pad_value, mask, channels, circular, method, memory_limit). ``memory_limit`` applies per chunk.

    Returns:
        A lazy dask array of scores, [B, T, H', W'] ([B, T, C, H', W'] for channels="separate"; [H', W'] for 2-D
        input), float32 (float64 for float64 or 32/64-bit integer input), chunked like the images: the score
        chunk of an image chunk holds the windows whose top-left pixel (on the padded image) lies in it.

    Raises:
        SlidesimTypeError, SlidesimValueError: As the in-memory call would, before anything is computed.
    """
    da = tiles.dask_array()
    options = with_defaults(options)
    images = tiles.as_dask(images)
    canon, _ = tiles.validated(images, templates, options)
    problem = canon.problem
    if canon.two_d:
        images = images[None, None]
    tiling = tiles.tile(images, canon)
    separate = canon.channels_mode == "separate"
    out_shape = (problem.n_templates, problem.channels) if separate else (problem.n_templates,)
    dtype = tiles.out_dtype(canon)
    bank = np.asarray(tiles.host(templates))
    mask = None if options["mask"] is None else np.asarray(tiles.host(options["mask"]))
    if canon.two_d:
        bank = bank[None, None]  # [1, 1, h, w] for the [1, 1, H, W] image chunks
    chunks = (tiling.batch_chunks, *((size,) for size in out_shape), tiling.out_rows, tiling.out_cols)
    scores = da.map_blocks(
        tiles.score_block,
        tiling.overlapped,
        dtype=dtype,
        chunks=chunks,
        new_axis=[2] if separate else None,
        meta=np.empty((0,) * len(chunks), dtype=dtype),
        tiling=tiling,
        geometry=tiles.window_span(canon),
        templates=bank,
        mask=mask,
        per_image=problem.per_image_bank,
        out_shape=out_shape,
        out_dtype=dtype,
        options=options_of(canon, mode="valid", mask=None),  # the chunks arrive padded
    )
    return scores[0, 0] if canon.two_d else scores


# ----------------------------------------------------------------------------------------------------------- match
_CANDIDATES_PER_CHUNK = 16  # peak candidates each chunk sends per (image, template) beyond k, at first


def _candidates(
    block: np.ndarray,
    *,
    y0: int,
    x0: int,
    b0: int,
    radius: int,
    limit: int,
    out_size: tuple[int, int],
    higher: bool,
    threshold: float | None,
    border: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Peak candidates of one chunk of the best maps, as :func:`slidesim.peaks.locate_peaks` defines them.

    Args:
        block: [b, T, 2, ny + 2·radius, nx + 2·radius]: best scores and transform indices, with a halo of
            ``radius`` (−inf outside the maps) so that every core position sees its whole neighbourhood.
        y0, x0, b0: Map position of the core's first row and column, and the block's first image.

    Returns:
        (rows [N, 6] float64 of (image, template, y, x, key, transform) for the ``limit`` best candidates of each
        (image, template) in this chunk, best first, ties to the earlier position; next [b, T]: the key of the
        best candidate left out, −inf when none was.)
    """
    H, W = out_size
    best = torch.from_numpy(np.ascontiguousarray(block[:, :, 0])).to(torch.float64)
    b, T, Hb, Wb = best.shape
    key = best if higher else -best
    key = torch.where(torch.isfinite(key), key, -torch.inf)
    if threshold is not None:
        key = torch.where(key >= (threshold if higher else -threshold), key, -torch.inf)
    rows = torch.arange(Hb)[:, None] + y0 - radius
    cols = torch.arange(Wb)[None, :] + x0 - radius
    inside = (rows >= border) & (rows < H - border) & (cols >= border) & (cols < W - border)
    key = torch.where(inside, key, -torch.inf)
    flat = key.reshape(b * T, 1, Hb, Wb)
    pooled = torch.nn.functional.max_pool2d(flat, (1, 2 * radius + 1), stride=1, padding=(0, radius))
    pooled = torch.nn.functional.max_pool2d(pooled, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    core = (slice(None), slice(None), slice(radius, Hb - radius), slice(radius, Wb - radius))
    peak = ((flat == pooled) & (pooled > -torch.inf))[core].reshape(b, T, Hb - 2 * radius, Wb - 2 * radius)
    key_core = key[:, :, radius : Hb - radius, radius : Wb - radius]
    which = block[:, :, 1, radius : Hb - radius, radius : Wb - radius]
    found = []
    following = np.full((b, T), -np.inf)
    for i in range(b):
        for t in range(T):
            ys, xs = peak[i, t].nonzero(as_tuple=True)
            if len(ys) == 0:
                continue
            values = key_core[i, t, ys, xs].numpy()
            gy, gx = ys.numpy() + y0, xs.numpy() + x0
            order = np.lexsort((gy * W + gx, -values))  # best first, then the earlier position
            if len(order) > limit:
                following[i, t] = values[order[limit]]
                order = order[:limit]
            for j in order:
                found.append((b0 + i, t, gy[j], gx[j], values[j], which[i, t, ys[j], xs[j]]))
    return np.asarray(found, dtype=np.float64).reshape(-1, 6), following


def _merge(candidates: np.ndarray, k: int, min_distance: int, width: int) -> list[tuple[int, ...]]:
    """Greedy suppression over every chunk's candidates of one (image, template), as in memory: best first (ties
    to the earlier position), a candidate kept when no kept one lies within min_distance. Rows of the kept."""
    order = np.lexsort((candidates[:, 2] * width + candidates[:, 3], -candidates[:, 4]))
    kept: list[int] = []
    for j in order:
        y, x = candidates[j, 2], candidates[j, 3]
        if all(max(abs(y - candidates[a, 2]), abs(x - candidates[a, 3])) >= min_distance for a in kept):
            kept.append(int(j))
            if len(kept) == k:
                break
    return kept


def _crop_region(centre: tuple[float, float], template_shape: tuple[int, int], dilation, size: tuple[int, int]):
    """The image rows and columns that sub-pixel refinement reads around an integer peak (clipped to the image)."""
    (r0, r1), (c0, c1) = crop_window(centre, template_shape, dilation)
    return (max(r0, 0), min(r1, size[0])), (max(c0, 0), min(c1, size[1]))


def match(
    images: object,
    templates: ArrayLike,
    *,
    metric: str = "zncc",
    k: int = 1,
    min_distance: int | None = None,
    threshold: float | None = None,
    rotations: Any = None,
    scales: Any = None,
    subpixel: bool = True,
    exclude_border: int = 0,
    progress: bool = False,
    **options: Any,
):
    """The k best matches of every template in every image of a dask array: the in-memory :func:`slidesim.match`
    result, found chunk by chunk.

    Each chunk folds the (rotated, scaled) bank into a best-score map and the index of the best transform, and
    sends its peak candidates (local maxima over a neighbourhood that reaches into the next chunks, so a peak on a
    chunk border is seen once, with its true neighbours). The candidates of all chunks are then suppressed
    together, exactly as in memory. Each chunk sends its best few candidates; where a chunk held back one that
    could have changed the result (as good as the k-th match found), the candidates are gathered again with a
    larger allowance, so the result never depends on the chunking. Sub-pixel refinement reads a small window of
    the image around each match.

    Args:
        images: dask array [H, W] or [B, C, H, W] (chunked along any axis; channels are merged).
        templates: In memory, as for :func:`slidesim.match`.
        metric, k, min_distance, threshold, rotations, scales, subpixel, exclude_border: As for
            :func:`slidesim.match`.
        progress: Show a progress bar of the chunks on stderr (dask's, or dask.distributed's on a cluster).
        **options: As for :func:`slidesim.match` (stride, dilation, mode, padding, pad_value, mask, channels,
            circular, method, memory_limit).

    Returns:
        :class:`slidesim.Matches` with numpy fields; ``maps`` is the lazy dask array of best scores [B, T, H', W'].

    Raises:
        SlidesimTypeError, SlidesimValueError: As the in-memory call would, before anything is computed.
    """
    from dask import delayed

    da = tiles.dask_array()
    search = prepare(metric, k, min_distance, threshold, rotations, scales, exclude_border, options)
    k, threshold, border, call = search.k, search.threshold, search.border, search.call
    images = tiles.as_dask(images)
    shapes, values = tiles.validated(images, templates, call)
    T, h, w = values.templates.shape[1], *values.templates.shape[-2:]
    distance = search.distance(h, w)
    stream = None
    if search.transformed:  # the image's size bounds the scales; memory_limit applies per chunk, checked there
        stream = search.stream(dataclasses.replace(shapes, templates=values.templates, mask=values.mask), False)
    R = stream.transforms if stream is not None else 1
    transform_angles = stream.angles if stream is not None else torch.zeros(1, dtype=torch.float64)
    transform_scales = stream.scales if stream is not None else torch.ones(1, dtype=torch.float64)
    four_d = tiles.shape_only(images)
    if shapes.two_d:
        four_d = four_d[None, None]
        images = images[None, None]
    layout, layout_mask = tiles.bank_layout(values, stream)
    canon = canonicalize(four_d, layout, **{**call, "mask": layout_mask})  # the bank's geometry
    problem = canon.problem
    tiling = tiles.tile(images, canon)
    chunks = (tiling.batch_chunks, (T,), (2,), tiling.out_rows, tiling.out_cols)
    dtype = tiles.out_dtype(canon)
    best = da.map_blocks(
        tiles.best_block,
        tiling.overlapped,
        dtype=dtype,
        chunks=chunks,
        new_axis=[2],
        meta=np.empty((0,) * 5, dtype=dtype),
        out_dtype=dtype,
        tiling=tiling,
        geometry=tiles.window_span(canon),
        templates=values.templates,
        mask=values.mask,
        angles=None if stream is None else stream.angle_list,
        scales=None if stream is None else stream.scale_list,
        options=options_of(canon, mode="valid", mask=None),  # the chunks arrive padded
    )
    radius = max(1, distance - 1)
    best = best.rechunk({3: tiles.at_least(best.chunks[3], radius), 4: tiles.at_least(best.chunks[4], radius)})
    haloed = da.overlap.overlap(best, depth={0: 0, 1: 0, 2: 0, 3: radius, 4: radius}, boundary=-np.inf)
    higher = canon.spec.higher_is_better
    out_size = (problem.out_height, problem.out_width)
    row_starts, col_starts = tiles.starts(best.chunks[3]), tiles.starts(best.chunks[4])
    batch_starts = tiles.starts(best.chunks[0])
    blocks = haloed.to_delayed()
    limit = k + _CANDIDATES_PER_CHUNK
    while True:
        where = [
            (ib, iy, ix)
            for ib in range(len(batch_starts))
            for iy in range(len(row_starts))
            for ix in range(len(col_starts))
        ]
        tasks = [
            delayed(_candidates)(
                blocks[ib, 0, 0, iy, ix],
                y0=row_starts[iy],
                x0=col_starts[ix],
                b0=batch_starts[ib],
                radius=radius,
                limit=limit,
                out_size=out_size,
                higher=higher,
                threshold=threshold,
                border=border,
            )
            for ib, iy, ix in where
        ]
        parts = _compute(tasks, progress)
        rows = np.concatenate([found for found, _ in parts])
        left_out = np.full((problem.batch, T), -np.inf)  # the best candidate any chunk held back
        for (_, following), (ib, _, _) in zip(parts, where, strict=True):
            span = slice(batch_starts[ib], batch_starts[ib] + following.shape[0])
            left_out[span] = np.maximum(left_out[span], following)
        kept, exact = [], True
        for b in range(problem.batch):
            for t in range(T):
                mine = rows[(rows[:, 0] == b) & (rows[:, 1] == t)]
                chosen = _merge(mine, k, distance, problem.out_width) if len(mine) else []
                kept.extend(mine[j] for j in chosen)
                # a held-back candidate as good as the k-th kept one (or any, when fewer than k were kept)
                # could have changed the result
                bar = mine[chosen[-1], 4] if len(chosen) == k else -np.inf
                if left_out[b, t] > -np.inf and left_out[b, t] >= bar:
                    exact = False
        if exact:
            break
        limit *= 4
    (sy, sx), (oy, ox) = canon.stride, window_origin(canon)
    H, W = images.shape[-2:]
    member = bank_members(values, stream)
    output = []
    for b, t, y, x, key, r in kept:
        b, t, y, x, r = int(b), int(t), int(y), int(x), int(r)
        cy, cx = y * sy + oy, x * sx + ox
        score = float(key if higher else -key)  # the best map's value: kept keys are never thresholded away
        if subpixel:
            cy, cx, score = _refine(images, values, member, call, (b, t * R + r), (cy, cx), (H, W))
        output.append((b, t, cy, cx, score, float(transform_angles[r]), float(transform_scales[r])))
    columns = list(zip(*best_first(output, higher), strict=True)) if output else [()] * 7
    fields = [np.asarray(c, dtype=np.int64) for c in columns[:2]] + [
        np.asarray(c, dtype=np.float64) for c in columns[2:]
    ]
    maps = best[:, :, 0]
    return Matches(*fields, maps=maps[0, 0] if shapes.two_d else maps)


def _compute(tasks: list, progress: bool) -> list:
    """Compute delayed tasks on the scheduler dask would pick, with a progress bar on stderr when asked for."""
    import dask
    from dask.base import get_scheduler

    if not progress:
        return list(dask.compute(*tasks))
    # A distributed Client is dask's scheduler when it is the default one and no config overrides it.
    client = getattr(get_scheduler(), "__self__", None)
    if client is None or not hasattr(client, "gather"):
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            return list(dask.compute(*tasks))
    from distributed import progress as cluster_progress

    futures = client.compute(tasks)
    with contextlib.redirect_stdout(sys.stderr):  # distributed's text bar writes to stdout; results may go there
        cluster_progress(futures)
    return client.gather(futures)


def _refine(images, values: Canonical, member, call, index, centre, size):
    """Sub-pixel (y, x, score) of one match, from the few image pixels that refinement reads; member(b, j) gives
    member j of image b's bank (see :func:`slidesim.matching.bank_members`)."""
    b, j = index
    template, weights = member(b, j)
    (r0, r1), (c0, c1) = _crop_region(centre, tuple(template.shape[-2:]), values.dilation, size)
    window = np.ascontiguousarray(images[b, :, r0:r1, c0:c1].compute())
    if window.dtype == np.uint16:
        window = window.astype(np.float32)  # as the core converts numpy uint16
    piece = torch.from_numpy(window).to(values.out_dtype)  # the compute dtype, as the core converts images
    higher = values.spec.higher_is_better
    y, x, score = refine_on_data(
        piece, template, weights, (centre[0] - r0, centre[1] - c0), values.dilation, higher, call
    )
    return y + r0, x + c0, score
