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
from ._checks import check_bool
from ._refine import crop_window, shifts_per_batch
from ._refine_many import Peak, refine_peaks
from ._types import ArrayLike
from ._validate import Canonical, canonicalize, channels_first, options_of, window_origin, with_defaults
from .errors import SlidesimValueError
from .matching import Matches, bank_members, best_first, prepare, with_boxes
from .peaks import core_candidates, suppress_points

__all__ = ["match", "similarity"]


def similarity(images: object, templates: ArrayLike, **options: Any):
    """Score maps of a dask array of images, chunk by chunk: the in-memory :func:`slidesim.similarity` result.

    Args:
        images: dask array [H, W] (with a 2-D template) or [B, C, H, W], chunked along any axis; chunks along
            channels are merged (every window needs all channels). numpy arrays and tensors are wrapped.
        templates: In memory, as for :func:`slidesim.similarity`: [h, w], [T, C, h, w] or per-image banks
            [B, T, C, h, w].
        **options: The keyword options of :func:`slidesim.similarity` (metric, stride, dilation, mode, padding,
            pad_value, mask, channels, circular, method, memory_limit, channels_last). ``memory_limit`` applies
            per chunk. With ``channels_last=True`` the images are [H, W, C] or [B, H, W, C] (read through a lazy
            transposed view) and the templates and mask hold their channels last, as in memory.

    Returns:
        A lazy dask array of scores, [B, T, H', W'] ([B, T, C, H', W'] for channels="separate"; [H', W'] for 2-D
        input), float32 (float64 for float64 or 32/64-bit integer input), chunked like the images: the score
        chunk of an image chunk holds the windows whose top-left pixel (on the padded image) lies in it. With
        ``channels_last=True`` the layout of the in-memory call: per-channel scores [B, T, H', W', C], and one
        [H, W, C] image with one [h, w, C] template gives [H', W'] ([H', W', C]).

    Raises:
        SlidesimTypeError, SlidesimValueError: As the in-memory call would, before anything is computed.
    """
    da = tiles.dask_array()
    options = with_defaults(options)
    images = tiles.as_dask(images)
    images, templates, options, layout = _channels_first_call(images, templates, options)
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
    return scores[0, 0] if canon.two_d else layout.scores(scores, separate)


@dataclasses.dataclass(frozen=True)
class _CallerLayout:
    """How the caller laid out a call's arrays: whether channels last, and whether as one [H, W, C] image with one
    [h, w, C] template (scores without batch and template axes)."""

    channels_last: bool = False
    unbatched: bool = False

    def scores(self, scores, separate: bool):
        """Lazy scores [B, T, H', W'] ([B, T, C, H', W'] when ``separate``) in the in-memory call's layout."""
        if self.channels_last and separate:
            scores = tiles.dask_array().moveaxis(scores, 2, -1)
        return scores[0, 0] if self.unbatched else scores


def _channels_first_call(images, templates: ArrayLike, options: dict[str, Any]):
    """(images, templates, options, :class:`_CallerLayout`) of the channels-first call that gives the scores of a
    call with ``channels_last=True``: the core checks the caller's arrays as they are (errors show their shapes),
    then the dask images are read through a lazy transposed view and the templates and mask are transposed (views,
    copied once where the core converts them)."""
    if not check_bool("channels_last", options["channels_last"]):
        return images, templates, options, _CallerLayout()
    templates, mask = tiles.host(templates), tiles.host(options["mask"])
    canonicalize(tiles.shape_only(images), templates, **{**options, "mask": mask})  # the core's checks
    unbatched = images.ndim == 3 and templates.ndim == 3
    images = channels_first(images if images.ndim != 3 else images[None])
    templates = channels_first(templates[None] if templates.ndim == 3 else templates)
    mask = None if mask is None else channels_first(mask)
    return images, templates, {**options, "mask": mask, "channels_last": False}, _CallerLayout(True, unbatched)


# ----------------------------------------------------------------------------------------------------------- match
_CANDIDATES_PER_CHUNK = 16  # peak candidates each chunk sends per (image, template) beyond k, at first
# Bytes a gathered candidate holds at most on the caller's side: its row of 6 float64 as a chunk sent it and in
# the merged table (2 × 48), the table sorted (48), the sort's keys and order (32), the suppression's map index,
# row and column (24), its cells and their counts (about 60), and a margin.
_CANDIDATE_BYTES = 320


def _chunk_candidates(
    piece: np.ndarray,
    *,
    b0: int,
    first: tuple[int, int],
    core: tuple[int, int, int, int],
    templates: torch.Tensor,
    mask: torch.Tensor | None,
    angles: list[float] | None,
    scales: list[float] | None,
    options: dict[str, Any],
    **candidates: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_candidates` of one chunk, scored here: ``piece`` [b, C, ...] of the padded images holds the windows
    of the map rows and columns ``first`` onwards that the chunk's core (``core``, in those coordinates) and the
    windows of its positions reach, so the maps of neighbouring chunks are never gathered."""
    bank, weights = tiles.bank_of(templates, mask, b0, piece.shape[0])
    best, which = tiles.best_maps(np.ascontiguousarray(piece), bank, weights, angles, scales, options)
    return _candidates(best, which, b0=b0, first=first, core=core, **candidates)


def _candidates(
    best: torch.Tensor,
    which: torch.Tensor,
    *,
    b0: int,
    first: tuple[int, int],
    core: tuple[int, int, int, int],
    radius: tuple[int, int],
    limit: int,
    out_size: tuple[int, int],
    higher: bool,
    threshold: float | None,
    border: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Peak candidates of one chunk of the best maps, as :func:`slidesim.peaks.locate_peaks` defines them.

    Args:
        best, which: [b, T, Hb, Wb]: best scores and transform indices of map rows first[0] onwards and columns
            first[1] onwards, reaching ``radius`` (rows, columns) beyond the core wherever the maps do, so that
            every core position sees its whole neighbourhood.
        b0: The block's first image.
        core: The core's rows y0:y1 and columns x0:x1 in the block.

    Returns:
        (rows [N, 6] float64 of (image, template, y, x, key, transform) for the ``limit`` best candidates of each
        (image, template) in this chunk, by (image, template) and best first, ties to the earlier position; next
        [b, T]: the key of the best candidate left out, −inf when none was.)
    """
    H, W = out_size
    b, T, Hb, Wb = best.shape
    # where a peak may be, in the block: inside the border, which lies in map coordinates
    allowed = (border - first[0], H - border - first[0], border - first[1], W - border - first[1])
    # by map, best first, then the earlier position (row-major in the block is row-major in the map)
    group, ys, xs, values, following = core_candidates(
        best.reshape(b * T, Hb, Wb), threshold, higher, allowed, radius, core, limit
    )
    image, template = group // T, group % T
    transform = which[image, template, ys, xs].to(torch.float64)
    gy, gx = (ys + first[0]).to(torch.float64), (xs + first[1]).to(torch.float64)
    columns = [(image + b0).to(torch.float64), template.to(torch.float64), gy, gx, values.to(torch.float64), transform]
    return torch.stack(columns, dim=1).numpy(), following.to(torch.float64).numpy().reshape(b, T)


def _chunk_pieces(
    tiling: tiles.Tiling, canon: Canonical, radius: tuple[int, int], out_size: tuple[int, int]
) -> list[tuple[Any, int, tuple[tuple[int, int], tuple[int, int]], tuple[int, int]]]:
    """Per chunk with outputs: (the piece of the padded images whose windows are the chunk's core outputs and
    ``radius`` more on every side within the maps, its first image, ((first map row, first map column) of the
    piece's windows, (the core's first row, column) among them), (core rows, core columns))."""
    (sy, sx), (span_h, span_w) = canon.stride, tiles.window_span(canon)["span"]
    ry, rx = radius
    H, W = out_size
    pieces = []
    for ib, b0 in enumerate(tiling.batch_starts):
        nb = tiling.batch_chunks[ib]
        for iy, row_start in enumerate(tiling.row_starts):
            for ix, col_start in enumerate(tiling.col_starts):
                ny, nx = tiling.out_rows[iy], tiling.out_cols[ix]
                if ny == 0 or nx == 0:
                    continue
                a, c = -(-row_start // sy), -(-col_start // sx)  # the core's first output row and column
                e0, e1 = max(0, a - ry), min(H, a + ny + ry)
                f0, f1 = max(0, c - rx), min(W, c + nx + rx)
                rows = slice(e0 * sy, (e1 - 1) * sy + span_h)
                cols = slice(f0 * sx, (f1 - 1) * sx + span_w)
                piece = tiling.padded[b0 : b0 + nb, :, rows, cols]
                pieces.append((piece, b0, ((e0, f0), (a - e0, c - f0)), (ny, nx)))
    return pieces


def _survivors(candidates: np.ndarray, k: int, min_distance: int, T: int, width: int, groups: int):
    """Suppression over every chunk's candidates, as in memory (:func:`slidesim.peaks.suppress_points`).

    Args:
        candidates: Rows [N, 6] (image, template, y, x, key, transform) of every chunk.
        k, min_distance: As for :func:`slidesim.match`.
        T: Templates per image; width: the maps' width; groups: images · templates.

    Returns:
        (the kept rows [n, 6], by image and template, best first; the key of each map's k-th kept candidate
        [groups], −inf where fewer than k were kept, at index image · T + template).
    """
    group = (candidates[:, 0] * T + candidates[:, 1]).astype(np.int64)
    order = np.lexsort((candidates[:, 2] * width + candidates[:, 3], -candidates[:, 4], group))
    table, group = candidates[order], group[order]
    ys, xs = (torch.from_numpy(table[:, i].astype(np.int64)) for i in (2, 3))
    kept = suppress_points(torch.from_numpy(group), ys, xs, k, min_distance).numpy()
    table, group = table[kept], group[kept]
    last = np.arange(len(group)) - np.searchsorted(group, group) == k - 1
    kth = np.full(groups, -np.inf)
    kth[group[last]] = table[last, 4]
    return table, kth


def _gathered_bytes(limit: int, blocks: np.ndarray, T: int) -> int:
    """Bytes the caller holds while it merges at most ``limit`` candidates per map from each chunk: blocks [n, 2]
    holds each chunk's images and map positions (a chunk cannot send more candidates than positions)."""
    return int((blocks[:, 0] * T * np.minimum(limit, blocks[:, 1])).sum()) * _CANDIDATE_BYTES


def _allowance(wanted: int, blocks: np.ndarray, T: int, memory_limit: int) -> int:
    """Candidates per chunk and map to gather: ``wanted``, or the most (maybe 0) whose merge fits memory_limit."""
    if _gathered_bytes(wanted, blocks, T) <= memory_limit:
        return wanted
    low, high = 0, wanted  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if _gathered_bytes(middle, blocks, T) <= memory_limit:
            low = middle
        else:
            high = middle
    return low


def _too_many_candidates(k: int, wanted: int, blocks: np.ndarray, T: int, memory_limit: int) -> SlidesimValueError:
    needed = _gathered_bytes(wanted, blocks, T)
    return SlidesimValueError(
        f"`memory_limit` of {memory_limit:,} bytes cannot hold the peak candidates that k={k:,} needs: "
        f"{wanted:,} per map from each of the {len(blocks):,} chunks would need {needed:,} bytes to merge. Lower "
        "`k`, pass a `threshold` or a larger `min_distance`, rechunk the images into fewer chunks, or raise "
        f"memory_limit to at least {needed:,}."
    )


def _crop_region(centre: tuple[float, float], template_shape: tuple[int, int], dilation, size: tuple[int, int]):
    """The image rows and columns that sub-pixel refinement reads around an integer peak (clipped to the image)."""
    (r0, r1), (c0, c1) = crop_window(centre, template_shape, dilation)
    return (max(r0, 0), min(r1, size[0])), (max(c0, 0), min(c1, size[1]))


def match(
    images: object,
    templates: ArrayLike,
    *,
    metric: str | int = "zncc",
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
    larger allowance, so the result never depends on the chunking; the candidates merged stay within
    ``memory_limit`` (each chunk sends fewer when that is all it holds). Sub-pixel refinement reads a small window
    of the image around each match and scores its shifts within ``memory_limit``.

    Args:
        images: dask array [H, W] or [B, C, H, W] (chunked along any axis; channels are merged).
        templates: In memory, as for :func:`slidesim.match`.
        metric, k, min_distance, threshold, rotations, scales, subpixel, exclude_border: As for
            :func:`slidesim.match`.
        progress: Show a progress bar of the chunks on stderr (dask's, or dask.distributed's on a cluster).
        **options: As for :func:`slidesim.match` (stride, dilation, mode, padding, pad_value, mask, channels,
            circular, method, memory_limit, channels_last).

    Returns:
        :class:`slidesim.Matches` with numpy fields (centres and boxes in image pixels, as in memory); ``maps`` is
        the lazy dask array of best scores [B, T, H', W'].

    Raises:
        SlidesimTypeError, SlidesimValueError: As the in-memory call would, before anything is computed.
        SlidesimValueError: The candidates needed to be exact (a large k on a map of ties) would not fit
            ``memory_limit``, with the bytes.
    """
    from dask import delayed

    da = tiles.dask_array()
    search = prepare(metric, k, min_distance, threshold, rotations, scales, exclude_border, options)
    k, threshold, border, call = search.k, search.threshold, search.border, search.call
    images = tiles.as_dask(images)
    images, templates, call, _ = _channels_first_call(images, templates, call)  # the maps stay [B, T, H', W']
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
    scoring = {
        "templates": values.templates,
        "mask": values.mask,
        "angles": None if stream is None else stream.angle_list,
        "scales": None if stream is None else stream.scale_list,
        "options": options_of(canon, mode="valid", mask=None),  # the chunks arrive padded
    }
    best = da.map_blocks(  # the maps, computed only if the caller reads them
        tiles.best_block,
        tiling.overlapped,
        dtype=dtype,
        chunks=chunks,
        new_axis=[2],
        meta=np.empty((0,) * 5, dtype=dtype),
        out_dtype=dtype,
        tiling=tiling,
        geometry=tiles.window_span(canon),
        **scoring,
    )
    higher = canon.spec.higher_is_better
    out_size = (problem.out_height, problem.out_width)
    if subpixel:  # refused before anything is computed when one match's refinement cannot fit memory_limit
        shifts_per_batch(canon.memory_limit, problem.channels, tuple(canon.templates.shape[-2:]), canon.dilation)
    # a neighbourhood wider than the maps sees no more of them
    radius = (min(max(1, distance - 1), out_size[0]), min(max(1, distance - 1), out_size[1]))
    pieces = _chunk_pieces(tiling, canon, radius, out_size)
    sizes = np.asarray([(piece.shape[0], ny * nx) for piece, _, _, (ny, nx) in pieces], dtype=np.int64)
    limit, wanted = 0, k + _CANDIDATES_PER_CHUNK
    while True:
        # the candidates merged below stay within memory_limit: fewer per chunk when that is all it holds
        allowed = _allowance(wanted, sizes, T, canon.memory_limit)
        if allowed <= limit:
            raise _too_many_candidates(k, wanted, sizes, T, canon.memory_limit)
        limit = allowed
        tasks = [
            delayed(_chunk_candidates)(
                piece,
                b0=b0,
                first=first,
                core=(core[0], core[0] + ny, core[1], core[1] + nx),
                radius=radius,
                limit=limit,
                out_size=out_size,
                higher=higher,
                threshold=threshold,
                border=border,
                **scoring,
            )
            for piece, b0, (first, core), (ny, nx) in pieces
        ]
        parts = _compute(tasks, progress)
        left_out = np.full((problem.batch, T), -np.inf)  # the best candidate any chunk held back
        for (_, following), (_, b0, _, _) in zip(parts, pieces, strict=True):
            span = slice(b0, b0 + following.shape[0])
            left_out[span] = np.maximum(left_out[span], following)
        candidates = np.concatenate([found for found, _ in parts])
        del parts
        kept, kth = _survivors(candidates, k, distance, T, out_size[1], problem.batch * T)
        del candidates
        # a held-back candidate as good as the k-th kept one (or any, when fewer than k were kept) could have
        # changed the result
        held = left_out.reshape(-1)
        if not bool(((held > -np.inf) & (held >= kth)).any()):
            break
        wanted = limit * 4
    (sy, sx), (oy, ox) = canon.stride, window_origin(canon)
    H, W = images.shape[-2:]
    member = bank_members(values, stream)
    output, members = [], []
    for b, t, y, x, key, r in kept.tolist():
        b, t, y, x, r = int(b), int(t), int(y), int(x), int(r)
        cy, cx = y * sy + oy, x * sx + ox
        score = float(key if higher else -key)  # the best map's value: kept keys are never thresholded away
        output.append((b, t, cy, cx, score, float(transform_angles[r]), float(transform_scales[r])))
        members.append((b, t * R + r))
    if subpixel and output:
        pieces = [
            _piece(images, values, member, index, (cy, cx), (H, W))
            for index, (_, _, cy, cx, *_) in zip(members, output, strict=True)
        ]
        refined = refine_peaks([peak for peak, _ in pieces], values.dilation, higher, call)
        output = [
            (b, t, cy + r0, cx + c0, score, angle, scale)
            for (b, t, *_, angle, scale), (cy, cx, score), (_, (r0, c0)) in zip(output, refined, pieces, strict=True)
        ]
    columns = list(zip(*best_first(output, higher), strict=True)) if output else [()] * 7
    fields = [torch.tensor(c, dtype=torch.int64) for c in columns[:2]] + [
        torch.tensor(c, dtype=torch.float64) for c in columns[2:]
    ]
    fields = [f.numpy() for f in with_boxes(fields, (h, w), canon.dilation)]
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


def _piece(images, values: Canonical, member, index, centre, size) -> tuple[Peak, tuple[int, int]]:
    """One match to refine, on the few image pixels that refinement reads (the peak's centre moved into them), and
    the piece's top-left pixel in the image; member(b, j) gives member j of image b's bank (see
    :func:`slidesim.matching.bank_members`)."""
    b, j = index
    template, weights = member(b, j)
    (r0, r1), (c0, c1) = _crop_region(centre, tuple(template.shape[-2:]), values.dilation, size)
    window = np.ascontiguousarray(images[b, :, r0:r1, c0:c1].compute())
    if window.dtype == np.uint16:
        window = window.astype(np.float32)  # as the core converts numpy uint16
    piece = torch.from_numpy(window).to(values.out_dtype)  # the compute dtype, as the core converts images
    return Peak(piece, template, weights, (centre[0] - r0, centre[1] - c0)), (r0, c0)
