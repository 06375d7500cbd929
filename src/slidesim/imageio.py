"""Reading images for the command line (floor L7): PNG, JPEG and TIFF through Pillow, 16-bit and multi-page TIFF
through tifffile. Both are optional (``pip install 'slidesim[cli]'``) and imported on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SlidesimTypeError, SlidesimValueError

__all__ = ["is_lazy", "open_lazy", "read_image", "read_mask"]

_TIFF = (".tif", ".tiff")
LARGE_TIFF_BYTES = 512 * 2**20  # TIFF files above this are opened lazily (as dask arrays) by the command line
_CHUNK = 2048  # pixels a side of the chunks of images read whole (PNG, JPEG) for a cluster


def _missing(module: str) -> SlidesimValueError:
    return SlidesimValueError(f"reading images needs {module}: pip install 'slidesim[cli]'")


def read_image(path: str | Path) -> np.ndarray:
    """An image file as float32 [B, C, H, W] in its own units (0–255 for 8-bit, 0–65535 for 16-bit).

    Pages of a multi-page TIFF are the batch; colour images have three channels (alpha is dropped), grey ones one.

    Raises:
        SlidesimValueError: The file is missing or is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise SlidesimValueError(f"image file {str(path)!r} does not exist")
    pages = _read_tiff(path) if path.suffix.lower() in _TIFF else [_read_pillow(path)]
    shapes = {page.shape for page in pages}
    if len(shapes) != 1:
        raise SlidesimValueError(f"the pages of {str(path)!r} differ in size: {sorted(shapes)}")
    return np.stack(pages).astype(np.float32)


def _as_channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return np.moveaxis(array[..., :3], -1, 0)
    raise SlidesimValueError(f"{str(path)!r} holds an array of shape {array.shape}, not a grey or colour image")


def _read_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise _missing("Pillow") from error
    try:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                image = image.convert("RGB" if image.mode != "LA" else "L")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise SlidesimValueError(f"cannot read {str(path)!r} as an image: {error}") from error
    return _as_channels_first(array, path)


def _read_tiff(path: Path) -> list[np.ndarray]:
    try:
        import tifffile
    except ImportError as error:
        raise _missing("tifffile") from error
    try:
        with tifffile.TiffFile(path) as tiff:
            pages = [page.asarray() for page in tiff.pages]
    except (tifffile.TiffFileError, OSError, ValueError) as error:
        raise SlidesimValueError(f"cannot read {str(path)!r} as a TIFF image: {error}") from error
    if not pages:
        raise SlidesimValueError(f"{str(path)!r} holds no image")
    return [_as_channels_first(page, path) for page in pages]


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as float32 [h, w]: 1 where the pixel is not zero (any channel), 0 elsewhere."""
    image = read_image(path)
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
    """A zarr array or a TIFF file as a lazy dask array [B, C, H, W] in its own dtype, read chunk by chunk (other
    formats are read whole, as :func:`read_image` does, and cut into chunks).

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
        raise SlidesimValueError(f"image {str(path)!r} does not exist")
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
    if chunk is not None:
        array = array.rechunk({2: chunk, 3: chunk})
    return array
