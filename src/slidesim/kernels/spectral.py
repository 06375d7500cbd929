"""Correlation through torch.fft (floor L2): Σ_c Σ_taps kernel · image for a whole bank, the image transformed once.

Used by the FFT engine for the cross term, by :mod:`slidesim.kernels.area_sums` for masked window sums in float64
(where exact zeros are not needed: degenerate windows are decided by the exact flat test), and by the exact
rescoring of :mod:`slidesim.scoring` for float64 cross terms.
"""

from __future__ import annotations

import functools
import math

import torch

from .._geometry import Geometry

# Cost per n·log2(n) of pocketfft (torch's CPU transforms) by the power of two in the length, relative to a
# multiple of 8, measured on a 2-core x86 machine in float32 (rows of 128 to 1200): odd lengths run a real
# transform along the last axis 3 times slower and a complex one along another axis 1.6 times slower, twice an
# odd number 1.35 times. One odd factor in the length (a 7-smooth 175 or 315 in place of 176 or 320) cost a
# 448×172 photograph's whole transform 1.5 times the even one's. Powers of two are no faster on two threads
# (1080×2048 took 11 ms where 1080×1920 took 6.3), so they get no weight of their own.
_LAST_AXIS_WEIGHT = {0: 3.0, 1: 1.35, 2: 1.2}
_OTHER_AXIS_WEIGHT = {0: 1.6, 1: 1.35}


@functools.lru_cache(maxsize=4096)
def next_fast_length(n: int, last_axis: bool = False) -> int:
    """The transform length m >= n of least expected cost: 7-smooth (prime factors in {2, 3, 5, 7}), at most the
    next power of two, weighing m·log2(m) by how fast pocketfft runs lengths with that many factors of two.

    ``last_axis``: the length of the real transform's axis (rfft2's last), where odd lengths cost most.
    """
    if n <= 1:
        return 1
    limit = 1 << (n - 1).bit_length()
    weights = _LAST_AXIS_WEIGHT if last_axis else _OTHER_AXIS_WEIGHT
    best, best_cost = limit, math.inf
    for m in _smooth_numbers(n, limit):
        twos = (m & -m).bit_length() - 1
        cost = m * math.log2(m) * weights.get(twos, 1.0)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def transform_size(height: int, width: int) -> tuple[int, int]:
    """The transform size of a height × width plane: rows and the real transform's axis, each of least cost."""
    return next_fast_length(height), next_fast_length(width, last_axis=True)


def _smooth_numbers(low: int, high: int) -> list[int]:
    """The 7-smooth integers in [low, high], ascending."""
    found = []
    p2 = 1
    while p2 <= high:
        p3 = p2
        while p3 <= high:
            p5 = p3
            while p5 <= high:
                p7 = p5
                while p7 <= high:
                    if p7 >= low:
                        found.append(p7)
                    p7 *= 7
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return sorted(found)


def fft_correlate(
    image: torch.Tensor,
    kernel: torch.Tensor,
    geom: Geometry,
    chunk_bytes: int,
    tile: tuple[int, int] | None = None,
    spectra: dict | None = None,
    out_dtype: torch.dtype | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] (Bk ∈ {1, B}) -> [B, T, H', W'] in
    ``out_dtype`` (None: the transforms'), the transforms in the image's dtype: tiles are narrowed as they are
    written.

    Integer images (8- and 16-bit) are transformed in the kernel's dtype, each tile widened as it is read.

    With ``shift`` [B, C, 1, 1], Σ_c Σ_taps kernel · (image − shift_c) with the transforms in the kernel's dtype:
    each tile is widened and centred as it is read, so no centred (or float64) copy of the whole image is made and
    every channel still shares one inverse transform.

    One transform of the whole image when its spectrum (about twice the image) fits ``chunk_bytes`` and is not
    large; otherwise overlap-save tiles (see :func:`choose_tile`), whose temporaries do not grow with the image.
    ``tile`` forces a transform size for the tiles. ``spectra``, when given, keeps the image's spectra for later
    calls on the same image tensor (a bank streamed in chunks): the whole image's, or every tile's when together
    they fit ``chunk_bytes`` (see :func:`tile_spectra_bytes`). An entry holds the image too, so the tensor cannot
    be freed and its identity reused while it exists.
    """
    reader = _Reader(image, shift, kernel.dtype)
    kernel = kernel.to(reader.dtype)
    (dy, dx) = geom.dilation
    Bk, T, C, h, w = kernel.shape
    if dy > 1 or dx > 1:  # spread the taps: a dilated kernel is an ordinary kernel with zeros between taps
        spread = kernel.new_zeros(Bk, T, C, dy * (h - 1) + 1, dx * (w - 1) + 1)
        spread[..., ::dy, ::dx] = kernel
        kernel = spread
    if tile is None:
        tile = choose_tile(image.shape, kernel.shape[-2:], T, reader.item, chunk_bytes, geom.stride)
    out_dtype = reader.dtype if out_dtype is None else out_dtype
    if tile is None:
        return _whole(reader, kernel, geom, chunk_bytes, spectra).to(out_dtype)
    return _tiled(reader, kernel, geom, chunk_bytes, tile, out_dtype, spectra)


class _Reader:
    """Pieces of the image as the transforms read them: as they are, or widened to ``dtype`` and centred by
    ``shift`` [B, C, 1, 1] (one temporary per piece, the size of the piece). Integer images (8- and 16-bit, as a
    call stores them) are always widened to ``dtype`` as they are read: the pieces hold exactly the values of the
    converted image's, and no converted copy of the whole image is made."""

    def __init__(self, image: torch.Tensor, shift: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.image, self.given_shift = image, shift
        self.shape = image.shape
        self.dtype = image.dtype if shift is None and image.is_floating_point() else dtype
        self.shift = None if shift is None else shift.to(self.dtype)
        self.item = self.dtype.itemsize

    def key(self) -> tuple:
        """Identifies the pieces' source for a spectrum kept between calls (the caller's tensors: the entry
        holds them, so their ids are not reused while it exists)."""
        return (id(self.image), None if self.shift is None else id(self.given_shift), self.dtype)

    def piece(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        piece = self.image[..., rows, cols]
        if self.shift is None:
            return piece if piece.dtype == self.dtype else piece.to(self.dtype)
        if piece.dtype == self.dtype:
            return torch.sub(piece, self.shift)
        # Widened, then centred in place: two vectorized passes over the piece run faster than one subtraction
        # of mixed dtypes (whose loop converts element by element), and give the same values (the widening is
        # exact, the subtraction is the one of the wide dtype either way).
        return piece.to(self.dtype).sub_(self.shift)


_STRIPS_FROM = 8 * 2**20  # bytes of one plane's spectrum from which strips of rows beat one whole transform
_TILES_FROM = 3 * 2**20  # bytes of one plane's spectrum from which square tiles beat one whole transform
_TILES_AREA_RATIO = 1.3  # ... when all the tiles together are at most this much larger than the whole transform


def choose_tile(
    image_shape: tuple[int, ...],
    span: tuple[int, int],
    n_templates: int,
    item: int,
    budget: int,
    stride: tuple[int, int] = (1, 1),
) -> tuple[int, int] | None:
    """Transform size of overlap-save tiles, or None for one transform of the whole image.

    Tiles are used when the whole image's spectrum would not fit ``budget``: each is a fast size of about four
    template spans (at least 128), big enough that the overlap wastes little, small enough to stay in cache.

    When it fits but one plane's spectrum is large, smaller transforms are faster than one whole transform,
    whose spectra, products and outputs are megabytes of fresh memory each (page faults, cache misses). Measured
    on a 2-core x86 machine, float32: from 8 MiB (about 1450² pixels) full-width strips of about four template
    spans of rows (at least 256): 2048² with a 64² template 33 ms against 64 ms, 3000² 112 against 242 ms; from
    3 MiB (about 900²) square tiles of about six spans (at least 384), provided that all tiles together transform
    at most 1.3 times the whole transform's pixels: 1024² zncc with 16², 32² and 64² templates 20, 20 and 12 ms
    against 32, 34 and 21 ms whole (tiles of 192 to 576 were all slower than 384); a bank of 8 24² templates 49
    against 109 ms. The whole transform stays where the tiles' overlap costs more than the fresh memory saves:
    at 1200² with a 40² template (16 tiles, 1.6 times the pixels) 19 against 23 ms, and at 768² and with three
    512² channels (below 3 MiB per plane).
    """
    B, C, Hp, Wp = image_shape
    Hf, Wf = transform_size(Hp, Wp)
    plane = Hf * (Wf // 2 + 1) * 2 * item
    if B * C * plane <= budget:
        if plane < _TILES_FROM:
            return None
        if plane >= _STRIPS_FROM:
            tile = (next_fast_length(max(256, 4 * span[0])), Wf)
        else:
            tile = (next_fast_length(max(384, 6 * span[0])), next_fast_length(max(384, 6 * span[1]), last_axis=True))
            tile = (min(tile[0], Hf), min(tile[1], Wf))
            if tile_count(tile, (Hp, Wp), span, stride) * tile[0] * tile[1] > _TILES_AREA_RATIO * Hf * Wf:
                return None  # the overlap would cost more than the fresh memory saves
        if tile == (Hf, Wf) or any(tile[i] - span[i] + 1 < stride[i] for i in (0, 1)) or tile[0] >= Hf:
            return None
        return tile
    th = next_fast_length(max(128, 4 * span[0]))
    tw = next_fast_length(max(128, 4 * span[1]), last_axis=True)
    if th >= Hp and tw >= Wp:
        return None
    return min(th, Hf), min(tw, Wf)


def tile_count(tile: tuple[int, int], padded: tuple[int, int], span: tuple[int, int], stride: tuple[int, int]) -> int:
    """How many overlap-save tiles of ``tile`` cover the outputs of a padded image of size ``padded``."""
    steps = tile_steps(tile, span, stride)
    need = [(padded[i] - span[i]) // stride[i] * stride[i] + 1 for i in (0, 1)]  # stride-1 positions spanned
    return -(-need[0] // steps[0]) * -(-need[1] // steps[1])


def _whole(
    reader: _Reader, kernel: torch.Tensor, geom: Geometry, chunk_bytes: int, spectra: dict | None
) -> torch.Tensor:
    """One transform of the whole image, shared by every template; templates in chunks of ``chunk_bytes``."""
    (sy, sx) = geom.stride
    B, _, Hp, Wp = reader.shape
    Bk, T = kernel.shape[:2]
    size = transform_size(Hp, Wp)
    key = (reader.key(), size)
    if spectra is not None and key in spectra:
        image_spectrum = spectra[key][1]
    else:
        image_spectrum = torch.fft.rfft2(reader.piece(), s=size)  # [B, C, Hf, Wf // 2 + 1], once for the bank
        if spectra is not None and not reader.image.requires_grad:
            spectra[key] = ((reader.image, reader.given_shift), image_spectrum)
    # the product convolves with the turned kernel: correlation output (y, x) lands at (y + span − 1, x + span − 1)
    top, left = kernel.shape[-2] - 1, kernel.shape[-1] - 1
    rows = slice(top, top + (geom.out_height - 1) * sy + 1, sy)
    cols = slice(left, left + (geom.out_width - 1) * sx + 1, sx)
    chunk = template_chunk(size, B, Bk, T, reader.item, chunk_bytes)
    out = None
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        full = torch.fft.irfft2(_product(image_spectrum, kernel[:, t0:t1], size), s=size)
        if chunk >= T:
            return full[..., rows, cols]
        if out is None:
            out = full.new_empty(B, T, geom.out_height, geom.out_width)
        out[:, t0:t1] = full[..., rows, cols]
    return out


def _product(image_spectrum: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Σ_c image_spectrum[:, c] · (spectrum of kernel[:, :, c] turned) -> [B, t, Hf, Wf // 2 + 1], one channel's
    kernel spectra at a time (channels summed in the frequency domain)."""
    return _accumulate(image_spectrum, lambda c: _kernel_spectrum(kernel[:, :, c], size), kernel.shape[2])


def _accumulate(
    image_spectrum: torch.Tensor,
    kernel_spectrum,
    channels: int,
    fresh: str = "kernel",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_c image_spectrum[:, None, c] · kernel_spectrum(c).

    ``fresh`` names the operand that is a new tensor the product may overwrite: "kernel" (each kernel spectrum,
    in whatever memory layout its transforms left), "image" (a tile's spectrum, when it has one channel and
    the product one template) or "neither". Overwriting it saves a spectrum-sized allocation and runs at the
    speed of an in-place product. With "neither", ``out`` (of the product's shape) receives the product when
    given.
    """
    B = image_spectrum.shape[0]
    product = None
    for c in range(channels):
        spectrum = kernel_spectrum(c)  # [Bk, t, Hf, Wf // 2 + 1]
        if product is None and fresh == "kernel" and spectrum.shape[0] == B:
            product = spectrum.mul_(image_spectrum[:, None, c])
        elif product is None and fresh == "image" and channels == 1 and spectrum.shape[1] == 1:
            product = image_spectrum.mul_(spectrum)  # [B, 1, ...]: the channel axis becomes the template axis
        elif product is None and out is not None:
            product = torch.mul(image_spectrum[:, None, c], spectrum, out=out)
        elif product is None:
            product = image_spectrum[:, None, c] * spectrum
        else:
            product.addcmul_(image_spectrum[:, None, c], spectrum)
        del spectrum
    return product


def tile_steps(tile: tuple[int, int], span: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """How far overlap-save tiles advance: the tile less the template span, rounded down to the stride."""
    return (
        max(stride[0], (tile[0] - span[0] + 1) // stride[0] * stride[0]),
        max(stride[1], (tile[1] - span[1] + 1) // stride[1] * stride[1]),
    )


def tile_spectra_bytes(shape: tuple[int, ...], tile: tuple[int, int], tiles: int, item: int) -> int:
    """Bytes of the spectra of every overlap-save tile of images ``shape`` [B, C, Hp, Wp] (``item`` bytes per real
    value): what keeping them for the later chunks of a streamed bank holds."""
    B, C = shape[:2]
    return tiles * B * C * tile[0] * (tile[1] // 2 + 1) * 2 * item


def _tiled(
    reader: _Reader,
    kernel: torch.Tensor,
    geom: Geometry,
    chunk_bytes: int,
    tile: tuple[int, int],
    out_dtype: torch.dtype | None = None,
    spectra: dict | None = None,
) -> torch.Tensor:
    """Overlap-save: each tile of ``tile`` pixels yields the outputs whose windows lie inside it; tiles advance
    by the tile size minus the template span (rounded down to the stride), so together they cover every output.

    The tiles' spectra are computed once per call, or once per image when ``spectra`` keeps them for the later
    chunks of a streamed bank (a rotation search scores one turned template after another on the same image:
    each chunk transformed every tile again, as many forward transforms as inverse ones); they are kept only
    when all of them fit ``chunk_bytes``, which is what the tiles save on large images otherwise."""
    (sy, sx) = geom.stride
    B, C = reader.shape[:2]
    Bk, T, _, span_h, span_w = kernel.shape
    th, tw = tile
    need_h, need_w = (geom.out_height - 1) * sy + 1, (geom.out_width - 1) * sx + 1  # stride-1 positions spanned
    step_h, step_w = tile_steps(tile, (span_h, span_w), geom.stride)
    if step_h + span_h - 1 > th or step_w + span_w - 1 > tw:
        raise ValueError(f"tile {tile} is smaller than the template span ({span_h}, {span_w}) plus the stride")
    out = reader.image.new_empty(B, T, geom.out_height, geom.out_width, dtype=out_dtype or reader.dtype)
    tiles = -(-need_h // step_h) * -(-need_w // step_w)
    kept = None
    if spectra is not None and tile_spectra_bytes(reader.shape, tile, tiles, reader.item) <= chunk_bytes:
        # the tiles' places and extents follow from the span and the stride as well as the tile size
        key = (reader.key(), "tiles", tile, (span_h, span_w), geom.stride)
        kept = spectra.setdefault(key, ((reader.image, reader.given_shift), {}))[1]
    chunk = max(1, template_chunk(tile, B, Bk, T, reader.item, chunk_bytes) // (C + 1))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        # [Bk, t, C, th, tw // 2 + 1], once for every tile; laid out in order, as the products read it once per tile
        kernels = _kernel_spectrum(kernel[:, t0:t1], tile).contiguous()
        products = None if kept is None else kernels.new_empty(B, t1 - t0, *kernels.shape[-2:])  # reused by tiles
        for y0 in range(0, need_h, step_h):
            rows = min(step_h, need_h - y0)
            for x0 in range(0, need_w, step_w):
                cols = min(step_w, need_w - x0)
                if kept is not None and (y0, x0) in kept:
                    spectrum = kept[(y0, x0)]
                else:
                    piece = reader.piece(slice(y0, y0 + rows + span_h - 1), slice(x0, x0 + cols + span_w - 1))
                    spectrum = torch.fft.rfft2(piece, s=tile)
                    if kept is not None:
                        kept[(y0, x0)] = spectrum
                # a kept spectrum is read by every chunk, the kernels' by every tile: then neither is overwritten
                fresh = "neither" if kept is not None else "image"
                product = _accumulate(
                    spectrum, lambda c, kernels=kernels: kernels[:, :, c], C, fresh=fresh, out=products
                )
                full = torch.fft.irfft2(product, s=tile)
                out[:, t0:t1, y0 // sy : (y0 + rows - 1) // sy + 1, x0 // sx : (x0 + cols - 1) // sx + 1] = full[
                    ..., span_h - 1 : span_h - 1 + rows : sy, span_w - 1 : span_w - 1 + cols : sx
                ]
    return out


def template_chunk(size: tuple[int, int], batch: int, bank_batch: int, n_templates: int, item: int, budget: int) -> int:
    """Templates per chunk so that a chunk's kernel spectra, product and inverse transform fit ``budget`` bytes."""
    plane = size[0] * (size[1] // 2 + 1) * 2 * item  # one complex half-spectrum
    per_template = (bank_batch + batch) * plane + batch * size[0] * size[1] * item
    return int(max(1, min(n_templates, budget // max(1, per_template))))


def _kernel_spectrum(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of kernels [..., h, w] turned by 180° and zero-padded to size.

    Multiplying an image spectrum by it convolves with the turned kernel, which is the correlation with the kernel
    moved by its span less one: output (y, x) of the correlation is (y + h − 1, x + w − 1) of the product's
    inverse, and as the transform covers the whole (padded) image, no output that is kept wraps around. This
    spares conjugating the spectrum, a pass as costly as the product itself. The row transforms run on the h
    rows that hold taps only, which halves the cost for small kernels.
    """
    return torch.fft.fft(torch.fft.rfft(kernel.flip(-2, -1), n=size[1], dim=-1), n=size[0], dim=-2)
