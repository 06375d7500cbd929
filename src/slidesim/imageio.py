"""Reading image files (floor L7), for the command line and for Python: PNG, JPEG and TIFF through Pillow, 16-bit
and multi-page TIFF through tifffile. Both are optional (``pip install 'slidesim[cli]'``) and imported on first use.

Files of different bit depths hold their values on different scales (0–255, 0–65535), so every reader returns
float32 on one scale: integer samples divided by their dtype's largest value (8-bit and 16-bit files both give
[0, 1]; signed ones about [−1, 1]), floating-point samples as stored. A template's alpha channel is its mask
(:func:`read_template`); an image's alpha is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import SlidesimTypeError, SlidesimValueError

__all__ = ["is_lazy", "open_lazy", "read_image", "read_mask", "read_template"]

_TIFF = (".tif", ".tiff")
LARGE_TIFF_BYTES = 512 * 2**20  # TIFF files above this are opened lazily (as dask arrays) by the command line
_CHUNK = 2048  # pixels a side of the chunks of images read whole (PNG, JPEG) for a cluster
_TIFF_ALPHA = (1, 2)  # ExtraSamples values of an alpha channel: associated (premultiplied) and unassociated


class _Page(NamedTuple):
    """One picture of a file as stored: colour [C, H, W] and alpha [H, W] (or None) in the file's dtype, and the
    sample value that means full intensity (255 for 8-bit samples; 1 for floating-point ones)."""

    colour: np.ndarray
    alpha: np.ndarray | None
    full_scale: float


def _missing(module: str) -> SlidesimValueError:
    return SlidesimValueError(f"reading images needs {module}: pip install 'slidesim[cli]'")


def _full_scale(dtype: np.dtype) -> float:
    """The sample value of full intensity: the largest value of an integer dtype (255, 65535), 1 for bool and
    floating-point samples (which are taken as stored)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def _to_unit_range(samples, scale: float):
    """Samples (numpy or dask, any dtype) as float32 divided by ``scale``, lazily for dask arrays.

    The division is in float32 either way, so an image read whole and read lazily give the same values.
    """
    values = samples.astype(np.float32)
    return values if scale == 1.0 else values / np.float32(scale)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as float32 [B, C, H, W] on the scale [0, 1] of its bit depth.

    Integer samples are divided by their dtype's largest value (255 for 8-bit files, 65535 for 16-bit ones;
    signed ones land in about [−1, 1]), so files of different bit depths compare in the same units;
    floating-point samples are kept as stored. Pages of a multi-page TIFF are the batch; colour images have
    three channels, grey ones one. An alpha channel is dropped: the colour values are matched as stored,
    transparent pixels included (a template's alpha is read by :func:`read_template`).

    Raises:
        SlidesimValueError: The file is missing or is not a readable image.
    """
    return np.stack([_to_unit_range(page.colour, page.full_scale) for page in _read_pages(path)])


def read_template(path: str | Path, *, alpha: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """A template file as (template [1, C, h, w] float32 on the scale of :func:`read_image`, mask [h, w] or None),
    ready for ``slidesim.match(image, template, mask=mask)``.

    Image editors leave any colour in the transparent pixels of a cut-out, so the alpha channel is the mask:
    weights alpha / full alpha in [0, 1], where a zero weight takes the pixel out of every window and a partly
    transparent one counts in part (with slidesim's mask semantics: weight M in sad and mad, M² in the
    correlations and ssd). A fully opaque alpha gives no mask (nothing to pay for), and so does a file without
    alpha.

    Args:
        path: A PNG, JPEG or single-page TIFF (RGBA, grey with alpha, a palette with a transparent entry...).
        alpha: False ignores the alpha channel: the colour values are matched as stored everywhere, and the mask
            is None.

    Raises:
        SlidesimValueError: The file is missing, unreadable, has several pages, or is fully transparent.
    """
    pages = _read_pages(path, "template")
    if len(pages) != 1:
        raise SlidesimValueError(f"template {str(path)!r} has {len(pages)} pages; expected one")
    page = pages[0]
    template = _to_unit_range(page.colour, page.full_scale)[None]
    if not alpha or page.alpha is None:
        return template, None
    weights = np.clip(_to_unit_range(page.alpha, page.full_scale), 0.0, 1.0)
    if bool((weights == 1.0).all()):
        return template, None
    if not bool((weights > 0).any()):
        raise SlidesimValueError(
            f"template {str(path)!r} is fully transparent: its alpha channel leaves no pixel to match; "
            "ignore the alpha (--ignore-alpha, or alpha=False) to match its colour values"
        )
    return template, weights


def _read_pages(path: str | Path, role: str = "image") -> list[_Page]:
    """The pictures of a file; ``role`` ("image", "template", "mask") names the file in errors."""
    path = Path(path)
    if path.is_dir():
        raise SlidesimValueError(f"{role} {str(path)!r} is a directory; the {role} must be a file (PNG, JPEG or TIFF)")
    if not path.is_file():
        raise SlidesimValueError(f"{role} file {str(path)!r} does not exist")
    pages = _read_tiff(path) if path.suffix.lower() in _TIFF else [_read_pillow(path)]
    shapes = {page.colour.shape for page in pages}
    if len(shapes) != 1:
        raise SlidesimValueError(f"the pages of {str(path)!r} differ in size: {sorted(shapes)}")
    return pages


def _split(
    samples: np.ndarray, colours: int, alpha_index: int | None, path: Path
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples [H, W] or [H, W, S] -> (colour [C, H, W], alpha [H, W] or None); extra samples that are not alpha
    are dropped."""
    if samples.ndim == 2:
        return samples[None], None
    if samples.ndim != 3 or colours not in (1, 3) or samples.shape[-1] < colours:
        raise SlidesimValueError(f"{str(path)!r} holds an array of shape {samples.shape}, not a grey or colour image")
    alpha = samples[..., alpha_index] if alpha_index is not None else None
    return np.moveaxis(samples[..., :colours], -1, 0), alpha


# Pillow modes -> the mode to read them in: alpha kept, colour spaces other than grey and RGB turned into RGB
_PILLOW_ALPHA = {"RGBA": "RGBA", "LA": "LA", "PA": "RGBA", "RGBa": "RGBA", "La": "LA"}
_PILLOW_PLAIN = {"L", "RGB", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _read_pillow(path: Path) -> _Page:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise _missing("Pillow") from error
    try:
        with Image.open(path) as image:
            if image.mode in _PILLOW_ALPHA:
                image = image.convert(_PILLOW_ALPHA[image.mode])
            elif image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # a transparent colour or entry
                image = image.convert("LA" if image.mode == "L" else "RGBA")
            elif image.mode == "1":
                image = image.convert("L")
            elif image.mode not in _PILLOW_PLAIN:  # palettes, CMYK, YCbCr, HSV, LAB...
                image = image.convert("RGB")
            mode = image.mode
            samples = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise SlidesimValueError(f"cannot read {str(path)!r} as an image: {error}") from error
    has_alpha = mode in ("RGBA", "LA")
    colours = 3 if mode in ("RGB", "RGBA") else 1
    colour, alpha = _split(samples, colours, colours if has_alpha else None, path)
    # Pillow reads 16-bit grey files as "I" (32-bit integers) in some versions: their scale is still 16-bit
    scale = 65535.0 if mode == "I" else _full_scale(samples.dtype)
    return _Page(colour, alpha, scale)


def _read_tiff(path: Path) -> list[_Page]:
    try:
        import tifffile
    except ImportError as error:
        raise _missing("tifffile") from error
    try:
        with tifffile.TiffFile(path) as tiff:
            pages = [_tiff_page(page, path) for page in tiff.pages]
    except (tifffile.TiffFileError, OSError, ValueError) as error:
        if isinstance(error, SlidesimValueError):
            raise
        raise SlidesimValueError(f"cannot read {str(path)!r} as a TIFF image: {error}") from error
    if not pages:
        raise SlidesimValueError(f"{str(path)!r} holds no image")
    return pages


def _tiff_page(page, path: Path) -> _Page:
    samples = page.asarray()
    if getattr(page, "axes", "").startswith("S") and samples.ndim == 3:  # planes of samples: to [H, W, S]
        samples = np.moveaxis(samples, 0, -1)
    extras = tuple(int(kind) for kind in getattr(page, "extrasamples", ()) or ())
    colours = samples.shape[-1] - len(extras) if samples.ndim == 3 else 1
    alpha_index = next((colours + i for i, kind in enumerate(extras) if kind in _TIFF_ALPHA), None)
    if samples.ndim == 3 and colours not in (1, 3):  # untagged samples (CMYK's fourth): the first three, no alpha
        colours, alpha_index = (3 if samples.shape[-1] >= 3 else 1), None
    colour, alpha = _split(samples, colours, alpha_index, path)
    return _Page(colour, alpha, _full_scale(samples.dtype))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as float32 [h, w]: 1 where the pixel is not zero (any channel), 0 elsewhere."""
    image = np.stack([_to_unit_range(page.colour, page.full_scale) for page in _read_pages(path, "mask")])
    if image.shape[0] != 1:
        raise SlidesimValueError(f"mask {str(path)!r} has {image.shape[0]} pages; expected one")
    return (image[0] != 0).any(axis=0).astype(np.float32)


def match_channels(image: np.ndarray, template: np.ndarray, name: str) -> np.ndarray:
    """The template with the image's channel count: colour templates on grey images become grey (mean)."""
    if template.shape[1] == image.shape[1]:
        return template
    if image.shape[1] == 1:
        return template.mean(axis=1, keepdims=True)
    if template.shape[1] == 1:
        return np.repeat(template, image.shape[1], axis=1)
    raise SlidesimTypeError(f"template {name!r} has {template.shape[1]} channels; the image has {image.shape[1]}")


def _is_zarr(path: Path) -> bool:
    markers = (".zarray", "zarr.json", ".zgroup")
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any((path / m).exists() for m in markers))


def is_lazy(path: str | Path) -> bool:
    """Whether the command line opens this image lazily: zarr arrays, and TIFF files above LARGE_TIFF_BYTES."""
    path = Path(path)
    if _is_zarr(path):
        return True
    return path.suffix.lower() in _TIFF and path.is_file() and path.stat().st_size > LARGE_TIFF_BYTES


def _batch_layout(array, path: Path, source: str):
    """A lazy array in its file's layout -> [B, C, H, W]: [H, W], [H, W, 3|4] (colour, alpha dropped), pages
    [P, H, W], pages of colour [P, H, W, 3|4]; zarr arrays may also be [C, H, W] or [B, C, H, W] already."""
    colour = array.ndim >= 3 and array.shape[-1] in (3, 4) and source == "tiff"
    if array.ndim == 2:
        return array[None, None]
    if array.ndim == 3 and colour:
        return array[..., :3].transpose(2, 0, 1)[None]
    if array.ndim == 3:
        return array[:, None] if source == "tiff" else array[None]  # TIFF pages; zarr [C, H, W]
    if array.ndim == 4 and colour:
        return array[..., :3].transpose(0, 3, 1, 2)
    if array.ndim == 4 and source == "zarr":
        return array
    raise SlidesimValueError(f"{str(path)!r} holds an array of shape {tuple(array.shape)}, not a grey or colour image")


def open_lazy(path: str | Path, chunk: int | None = None):
    """A zarr array or a TIFF file as a lazy dask array [B, C, H, W] of float32 on the scale of :func:`read_image`
    (integer samples divided by their dtype's largest value, alpha dropped), read chunk by chunk (other formats
    are read whole, as :func:`read_image` does, and cut into chunks).

    Args:
        path: A zarr array (directory), a TIFF file (tiled or striped; pages are the batch), or a PNG or JPEG.
        chunk: Spatial chunk size in pixels; default: the file's own chunks (tiles, strips or zarr chunks).

    Raises:
        SlidesimValueError: The path is missing, not an array, or not an image layout.
    """
    try:
        import dask.array as da
    except ImportError as error:
        raise SlidesimValueError("opening images lazily needs dask: pip install 'slidesim[dask]'") from error
    path = Path(path)
    if not path.exists():
        raise SlidesimValueError(f"image file {str(path)!r} does not exist")
    if not _is_zarr(path) and path.suffix.lower() not in _TIFF:  # PNG, JPEG: read whole, then cut into chunks
        return da.from_array(read_image(path), chunks=(1, -1, chunk or _CHUNK, chunk or _CHUNK))
    try:
        if _is_zarr(path):
            array, source = da.from_zarr(str(path)), "zarr"
        else:
            import tifffile

            array, source = da.from_zarr(tifffile.imread(path, aszarr=True)), "tiff"
    except Exception as error:  # zarr and tifffile raise many types for unreadable input
        raise SlidesimValueError(f"cannot open {str(path)!r} as an image array: {error}") from error
    array = _batch_layout(array, path, source)
    array = _to_unit_range(array, _full_scale(array.dtype))  # lazily, chunk by chunk, as read_image would
    if chunk is not None:
        array = array.rechunk({2: chunk, 3: chunk})
    return array
