"""Checkers of single user arguments (floor L1), shared by every public operation.

Each checker names the argument, says what was expected and what came, and raises a
:class:`~slidesim.errors.SlidesimTypeError` or :class:`~slidesim.errors.SlidesimValueError` (also TypeError and
ValueError).

Examples:
    >>> check_int("k", 3, 1)
    3
    >>> check_factors("scales", [0.5, 1], positive=True)
    [0.5, 1.0]
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .errors import SlidesimTypeError, SlidesimValueError

ACCEPTED_DTYPES = {
    torch.uint8,
    torch.int8,
    torch.uint16,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
}
DTYPE_LIST = "uint8, int8, uint16, int16, int32, int64, float16, bfloat16, float32, float64"


_LARGEST_STEP = 2**31 - 1  # larger strides and dilations fail inside torch ("Maximum allowed dimension exceeded")


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an int of at least ``low`` (bools are not ints here)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise SlidesimTypeError(f"`{name}` must be an int; got {value!r}.")
    if int(value) < low:
        raise SlidesimValueError(f"`{name}` must be >= {low}; got {value!r}.")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool: True or False (numpy's bools too), never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise SlidesimTypeError(f"`{name}` must be True or False; got {value!r}.")
    return bool(value)


def check_threshold(threshold: object) -> float | None:
    """A score threshold: a real number that is not NaN, or None."""
    if threshold is None:
        return None
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool):
        raise SlidesimTypeError(f"`threshold` must be a real number or None; got {threshold!r}.")
    if threshold != threshold:
        raise SlidesimValueError(
            "`threshold` must be a score to compare with, or None for no threshold; got NaN, which no score passes."
        )
    return float(threshold)


def check_factors(name: str, values: object, positive: bool) -> list[float] | None:
    """A non-empty sequence of finite numbers (positive ones when ``positive``) as floats, or None."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise SlidesimTypeError(f"`{name}` must be a sequence of numbers or None; got {type(values).__name__}.")
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    expected = "positive finite factors" if positive else "finite angles in degrees"
    example = "[0.8, 1.0, 1.25]" if positive else "range(0, 360, 5)"
    for item in items:  # float() would take strings and raise its own errors on the rest
        if not isinstance(item, numbers.Real) or isinstance(item, bool):
            raise SlidesimTypeError(
                f"`{name}` must be a sequence of real numbers ({expected}); got {item!r} "
                f"({type(item).__name__}) among them. Pass numbers, for example {example}."
            )
    numbers_ = [float(v) for v in items]
    if not numbers_:
        raise SlidesimValueError(f"`{name}` must hold at least one value; got an empty sequence.")
    bad = [v for v in numbers_ if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        raise SlidesimValueError(f"`{name}` must hold {expected}; got {bad[0]!r}.")
    return numbers_


def to_tensor(
    name: str, value: object, device: torch.device | None, keep_uint16: bool = False
) -> tuple[torch.Tensor, bool]:
    """A torch tensor or numpy array as (tensor on ``device`` when given, whether it came from numpy).

    numpy uint16 becomes float32 (torch's uint16 has few kernels) unless ``keep_uint16`` and the tensor stays on
    the CPU: images keep it, as :func:`slidesim._validate.canonicalize` stores 16-bit images narrow.
    """
    if isinstance(value, torch.Tensor):
        return value, False
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and value.dtype.itemsize > 8:  # long double: torch has no such dtype
            raise SlidesimTypeError(
                f"`{name}` must have dtype {DTYPE_LIST}; got numpy dtype {value.dtype}. "
                f"Convert it first, for example with {name}.astype(numpy.float64)."
            )
        if (value.dtype == np.bool_ and name != "mask") or value.dtype.kind in "cOSUV":  # bool masks are binary
            raise SlidesimTypeError(
                f"`{name}` must have a real numeric dtype ({DTYPE_LIST}); got numpy dtype {value.dtype}."
            )
        array = np.ascontiguousarray(value)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        kept = keep_uint16 and (device is None or device.type == "cpu")
        if array.dtype == np.uint16 and not kept:
            array = array.astype(np.float32)  # exact; torch's uint16 has few kernels
        elif array.dtype.kind == "u" and array.dtype not in (np.uint8, np.uint16):
            raise SlidesimTypeError(f"`{name}` must have dtype {DTYPE_LIST}; got numpy dtype {array.dtype}.")
        with warnings.catch_warnings():  # read-only arrays (Pillow's np.asarray(image)) are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(array)
        return (tensor.to(device) if device is not None else tensor), True
    raise SlidesimTypeError(
        f"`{name}` must be a torch.Tensor or a numpy.ndarray; got {type(value).__name__}. "
        "Convert it first, for example with numpy.asarray(...)."
    )


def check_callable(name: str, value: object) -> None:
    """A callback, or None."""
    if value is not None and not callable(value):
        raise SlidesimTypeError(
            f"`{name}` must be a callable such as a function taking (done, total), or None; got {value!r}."
        )


def check_has_values(**arrays: object) -> None:
    """Arrays to score must hold values: a meta tensor has a shape only (numpy data beside one would be moved onto
    it and lose its values)."""
    for name, value in arrays.items():
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            raise SlidesimValueError(
                f"`{name}` must hold values to score; got a meta tensor of shape {tuple(value.shape)}, which has "
                "a shape but no data. Pass the tensor on a real device (cpu or cuda)."
            )


def check_dtype(name: str, tensor: torch.Tensor) -> None:
    """A dtype slidesim accepts, and at least one value."""
    if tensor.dtype not in ACCEPTED_DTYPES:
        raise SlidesimTypeError(f"`{name}` must have dtype {DTYPE_LIST}; got {tensor.dtype}.")
    if tensor.numel() == 0:
        raise SlidesimValueError(f"`{name}` must not be empty; got shape {tuple(tensor.shape)}.")


_SAMPLE_DTYPES = {  # the integer dtypes of image files' samples, whose values are on the scale of their bit depth
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
}


def sample_dtype(value: object) -> str | None:
    """The name of an array's dtype ("uint16") when it is an 8- or 16-bit integer dtype, else None."""
    dtype = getattr(value, "dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else None
    return name if name in _SAMPLE_DTYPES else None


def check_sample_depths(images: object, templates: object) -> None:
    """8- and 16-bit integer images and templates of different bit depths: their values are on different scales
    (0–255 against 0–65535), so a score would compare them as equal units and find the wrong place.

    Reads only the dtypes (numpy arrays, torch tensors, dask arrays); other arrays and dtypes pass.
    """
    image_dtype, template_dtype = sample_dtype(images), sample_dtype(templates)
    if image_dtype is None or template_dtype is None:
        return
    image_range, template_range = _SAMPLE_DTYPES[image_dtype], _SAMPLE_DTYPES[template_dtype]
    if image_range[1] - image_range[0] == template_range[1] - template_range[0]:  # the same bit depth
        return
    narrow = "templates" if image_range[1] > template_range[1] else "images"
    scale_up = ""
    if image_range[0] == 0 and template_range[0] == 0:  # both unsigned: 8-bit v is 16-bit v · 257 (255 → 65535)
        scale_up = f"{narrow}.astype(numpy.float32) * 257 puts the 8-bit values on the 16-bit scale, or "
    raise SlidesimTypeError(
        f"`images` and `templates` must have the same bit depth; got images of dtype {image_dtype} "
        f"({image_range[0]}–{image_range[1]}) and templates of dtype {template_dtype} "
        f"({template_range[0]}–{template_range[1]}), which every metric would compare as if in the same units. "
        f"Bring them to one range first: {scale_up}divide each by its dtype's maximum to compare both in [0, 1]."
    )


def check_pair(name: str, value: object) -> tuple[int, int]:
    """An int or a (y, x) pair of ints, each at least 1, as a pair."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise SlidesimTypeError(f"`{name}` must be an int or a pair of ints (y, x); got {value!r}.")
    if min(pair) < 1:
        raise SlidesimValueError(f"`{name}` must be >= 1 along both axes; got {value!r}.")
    if max(pair) > _LARGEST_STEP:  # beyond any image torch can hold, and beyond what its index arithmetic takes
        raise SlidesimValueError(f"`{name}` must be at most {_LARGEST_STEP} along both axes; got {value!r}.")
    return pair


def check_option(name: str, value: object, valid: tuple[str, ...]) -> str:
    """One of the ``valid`` option names, case-insensitive, lowercased."""
    if not isinstance(value, str):
        raise SlidesimTypeError(f"`{name}` must be a string, one of {', '.join(map(repr, valid))}; got {value!r}.")
    if value.lower() not in valid:
        raise SlidesimValueError(f"`{name}` must be one of {', '.join(map(repr, valid))}; got {value!r}.")
    return value.lower()
