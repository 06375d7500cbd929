"""Command line (floor L7): ``slidesim match``, ``slidesim demo`` and ``slidesim explain`` (also ``python -m
slidesim``).

The front end reads files, calls the public API and prints or draws what it returns; it holds no numerical code.
Bad input (a missing or unreadable file, a template larger than the image, an unknown metric, a malformed range)
prints one line on stderr, in the options' names, and exits with code 2. Listed rotations and scales that cannot fit
the image are skipped (a scale range narrowed) with a warning on stderr; only a search where none fits is an error.
``--rotations START:STOP`` and ``--scales START:STOP`` are ``slidesim.interval`` ranges, searched as match's
``search`` (``--search``, default auto) chooses; a heat map or figure keeps the exhaustive search, whose maps it draws.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__
from ._interval import Interval, interval
from .errors import SlidesimError, SlidesimValueError

METRIC_CHOICES = "sad, mad, l1_similarity, ssd, ssd_normed, ccorr, ncc, ccoeff, zncc (or OpenCV's TM_* names)"
# the columns of every output format (table, --json, --csv), in this order
COLUMNS = (
    "image",
    "page",
    "template",
    "template_index",
    "y",
    "x",
    "top",
    "left",
    "height",
    "width",
    "score",
    "angle",
    "scale",
)
POSITIONS = (
    "pixels of the image (row, column from its top-left pixel): y, x = centre of the match; top, left = top-left "
    "corner of its box; height, width = the box's size (a turned template's bounding box)"
)
FILES = (
    "Files are compared on one scale: integer samples are divided by their dtype's largest value (255 for 8-bit "
    "files, 65535 for 16-bit ones), floating-point TIFF and zarr samples are kept as stored, so a 16-bit image and "
    "an 8-bit template compare in the same units (sad, ssd and ccorr scores are in these units). A template's alpha "
    "channel is its mask (--ignore-alpha turns that off); an image's alpha is dropped."
)
OUTPUT = (
    f"Output: a row per match with the columns {', '.join(COLUMNS)} (image and template are file names, page the "
    f"page of a multi-page TIFF, template_index the template's position on the command line); {POSITIONS}."
)
MATCH_DESCRIPTION = f"Find templates in an image. {FILES} {OUTPUT}"
READING = """\
positions:
  y and x are the centre of the matched template, in image pixels from the centre of the top-left pixel (0, 0):
  row y, column x, sub-pixel unless --no-subpixel. angle is in degrees, counter-clockwise as displayed; scale is
  a factor of the template's size.

scores:
  sad, mad, ssd and ssd_normed are distances, minimized: lower is better and --threshold keeps scores at or
  below it. l1_similarity, ccorr, ncc, ccoeff and zncc are maximized: higher is better and --threshold keeps
  scores at or above it. zncc (the default) and ncc lie in [-1, 1]; 1 is a perfect match.
"""
MATCH_EPILOG = f"""{READING}
examples:
  slidesim match screen.png button.png                        the best match of one template
  slidesim match screen.png icon.png --all --threshold 0.9    every match scoring at least 0.9
  slidesim match scene.png part.png --rotations 0:360 --scales 0.8:1.25 --overlay found.png
                                                              a part at any angle and scale (coarse to fine),
                                                              its turned and scaled outline drawn
  slidesim match scene.png part.png --top 3 --rotations 0:360:5 --scales 0.8:1.25:0.05
                                                              the 3 best over exactly these angles and scales
  slidesim match scene.png a.png b.png --metric sad --json    two templates, lowest sum of |differences|, JSON
  slidesim match photo.png logo.png --grey                    a colour template on a grey photo
  slidesim match scene.png part.png --mode same --overlay found.png
                                                              templates may overhang the image's edges
"""
EXPLAIN_EPILOG = """examples:
  slidesim explain scene.png part.png --metric sad            which engine a match would use, and why
  slidesim explain scene.png part.png --rotations 0:360:5     the same for the turned templates that match scores
  slidesim explain scene.png part.png --rotations 0:360 --scales 0.8:1.25
                                                              the pose search match would run (pyramid or
                                                              exhaustive), why, and its rough cost
"""
# API argument names -> the command line's options, for errors raised by the API
_FLAGS = {
    "k": "--top",
    "min_distance": "--min-distance",
    "threshold": "--threshold",
    "rotations": "--rotations",
    "scales": "--scales",
    "metric": "--metric",
    "method": "--method",
    "stride": "--stride",
    "mode": "--mode",
    "memory_limit": "--memory-limit",
    "search": "--search",
    "levels": "--levels",
    "beam": "--beam",
    "mask": "--mask",
    "templates": "the template",
    "images": "the image",
}
_SIZE_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other input error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"slidesim: error: {message} (see {self.prog} --help)\n")


def parse_range(text: str, name: str, inclusive: bool) -> list[float] | Interval:
    """Values from "START:STOP:STEP", "a,b,c" or one number, or the continuous range "START:STOP".

    Ranges of three numbers are grids: they include STOP when ``inclusive`` (scales: 0.8:1.25:0.05 ends at 1.25)
    and exclude it otherwise (rotations: 0:360:5 ends at 355, as Python's range). Two numbers are
    ``slidesim.interval(START, STOP)``: every value between, on a step the search chooses from the template's size.
    """
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) == 2:
                return _range_of(parts[0], parts[1], text, name)
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise SlidesimValueError(
                    f"`--{name}` needs STEP > 0 and STOP >= START in START:STOP:STEP; got {text!r}"
                )
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [start + k * step for k in range(count)]
            if not inclusive and values and abs(values[-1] - stop) < 1e-9 * max(1.0, abs(stop)):
                values.pop()
            return [round(v, 10) for v in values]
        return [float(p) for p in text.split(",")]
    except ValueError as error:
        if isinstance(error, SlidesimError):
            raise
        raise SlidesimValueError(
            f"`--{name}` must be START:STOP (a continuous range), START:STOP:STEP, a comma-separated list or one "
            f"number; got {text!r}"
        ) from None


def _range_of(start: float, stop: float, text: str, name: str) -> Interval:
    """``slidesim.interval(start, stop)`` for "START:STOP", refused in the option's terms."""
    if not (math.isfinite(start) and math.isfinite(stop)) or stop <= start:
        raise SlidesimValueError(
            f"`--{name}` START:STOP needs finite numbers with STOP above START; got {text!r}"
            + (" (a scale range must also start above 0)" if name == "scales" else "")
        )
    if name == "scales" and start <= 0:
        raise SlidesimValueError(f"`--{name}` START:STOP needs START above 0 (scale factors); got {text!r}")
    return interval(start, stop)


def _progress(quiet: bool) -> Callable[[int, int], None] | None:
    """Progress bars (tqdm) when stderr is a terminal (and tqdm is installed), else None: one for the templates of
    the bank, then one for the matches refined to sub-pixel positions (match's phases each count from 0)."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    phases = iter((("templates", "tpl"), ("refining matches", "match")))
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done < bar.n or total != bar.total:  # a new phase
            if bar is not None:
                bar.close()
            desc, unit = next(phases, ("working", "step"))
            bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def output_rows(rows: list[dict], labels: Sequence[str], image: str) -> list[dict]:
    """The rows of every output format: matches as :meth:`slidesim.Matches.to_records` gives them (``template`` the
    position on the command line) -> dicts with the keys of ``COLUMNS``, file names in full."""
    return [
        {
            "image": image,
            "page": row["batch"],
            "template": labels[row["template"]],
            "template_index": row["template"],
            **{name: row[name] for name in COLUMNS[4:]},
        }
        for row in rows
    ]


def _table(rows: list[dict]) -> str:
    """Rows of ``output_rows`` as aligned text, under a line that says what the positions are."""
    image_width = max([len("image"), *(len(row["image"]) for row in rows)])
    template_width = max([len("template"), *(len(row["template"]) for row in rows)])
    lines = [
        POSITIONS,
        f"{'image':<{image_width}} {'page':>4} {'template':<{template_width}} {'template_index':>14} {'y':>9} "
        f"{'x':>9} {'top':>9} {'left':>9} {'height':>7} {'width':>7} {'score':>10} {'angle':>7} {'scale':>6}",
    ]
    for row in rows:
        lines.append(
            f"{row['image']:<{image_width}} {row['page']:>4} {row['template']:<{template_width}} "
            f"{row['template_index']:>14} {row['y']:>9.2f} {row['x']:>9.2f} {row['top']:>9.2f} {row['left']:>9.2f} "
            f"{row['height']:>7.2f} {row['width']:>7.2f} {row['score']:>10.4f} {row['angle']:>7.1f} "
            f"{row['scale']:>6g}"
        )
    if not rows:
        lines.append("(no match passed the threshold)")
    return "\n".join(lines)


def _emit(rows: list[dict], labels: Sequence[str], image: str, fmt: str) -> str:
    """Matches (records, ``template`` the position on the command line) as a table, JSON or CSV, all with the
    columns of ``COLUMNS``."""
    table = output_rows(rows, labels, image)
    if fmt == "json":
        return json.dumps(table, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return buffer.getvalue().rstrip("\n")
    return _table(table)


def _options(args: argparse.Namespace) -> dict:
    """The options of slidesim.similarity that the command line sets (shared by match and explain)."""
    return {
        "metric": args.metric,
        "stride": args.stride,
        "method": args.method,
        "mode": args.mode,
        "memory_limit": args.memory_limit,
    }


def memory_size(text: str) -> int:
    """Bytes from "536870912", "512M", "2G" or "64K" (binary units) for --memory-limit."""
    number, suffix = (text[:-1], text[-1].upper()) if text[-1:].upper() in "KMG" and text[-1:].isalpha() else (text, "")
    try:
        value = float(number) * _SIZE_SUFFIXES[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be bytes such as 536870912, 512M or 2G; got {text!r}") from None
    return int(value)


def pose_options(args: argparse.Namespace) -> dict:
    """The ``search``, ``levels`` and ``beam`` of match for the options: a heat map or figure is drawn from the score
    maps, which only the exhaustive search keeps, so asking for one makes --search auto exhaustive."""
    search = args.search
    if search == "auto" and (args.heatmap or args.figure):
        search = "exhaustive"
    return {"search": search, "levels": args.levels, "beam": args.beam}


def _check_search(args: argparse.Namespace) -> None:
    """Refuse a pose search that cannot give what the other options ask for, before any file is read."""
    maps = [f"--{name}" for name in ("heatmap", "figure") if getattr(args, name)]
    pyramid = args.search == "pyramid" or (args.levels is not None and args.search == "auto")
    asked = "--search pyramid" if args.search == "pyramid" else "--levels"
    if args.search == "exhaustive" and (args.levels is not None or args.beam is not None):
        raise SlidesimValueError("--levels and --beam shape the pyramid search; --search exhaustive takes neither")
    if pyramid and maps:
        raise SlidesimValueError(
            f"{' and '.join(maps)} draw the score maps of the exhaustive search, which {asked} does not keep: drop "
            f"{asked} (a heat map makes --search auto exhaustive) or drop {' and '.join(maps)}"
        )
    if pyramid and getattr(args, "all", False):
        raise SlidesimValueError(
            f"--all keeps every match above --threshold, which the exhaustive search finds; {asked} carries only "
            "the best few positions down its pyramid: drop it, or use --top N"
        )
    lazy = getattr(args, "chunk", None) or getattr(args, "workers", None) or getattr(args, "scheduler", None)
    if lazy and pyramid:
        raise SlidesimValueError(
            f"{asked} searches images in memory; a lazy image (--chunk, --workers or --scheduler) is searched "
            "exhaustively, chunk by chunk"
        )


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse option values the API would refuse, before any file is read, with the options' own names."""
    at_least_one = ("top", "min_distance", "stride", "chunk", "workers", "memory_limit", "beam")
    for name in at_least_one:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SlidesimValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if getattr(args, "all", False):
        if args.threshold is None:
            raise SlidesimValueError(
                "--all needs --threshold: it keeps every match at least that good (e.g. --all --threshold 0.9)"
            )
        if args.top is not None:
            raise SlidesimValueError("--all and --top exclude each other: --all keeps every match above --threshold")
    if args.levels is not None and args.levels < 0:
        raise SlidesimValueError(f"--levels must be at least 0, got {args.levels}")
    _check_search(args)


def in_cli_terms(message: str) -> str:
    """An error of the API in the command line's terms: argument names become options (`k` -> --top), and
    mode='same' advice becomes --mode same."""
    message = re.sub(r"mode='(\w+)' or '(\w+)'", r"--mode \1 or --mode \2", message)
    message = re.sub(r"mode='(\w+)'", r"--mode \1", message)
    message = re.sub(r"\bk=(\S+) needs", r"--top \1 needs", message)
    message = re.sub(r"in mode '(\w+)'", r"in --mode \1", message)
    message = message.replace("raise memory_limit", "raise --memory-limit")
    message = re.sub(r"search='(\w+)'", r"--search \1", message)
    message = re.sub(r"levels=(\w+) or None", r"--levels \1 or leave --levels out", message)
    message = message.replace("`templates` spatial", "the template's")
    return re.sub(r"`(\w+)`", lambda found: _FLAGS.get(found[1], found[0]), message)


def _fitting_transforms(
    template_size: tuple[int, int],
    image_size: tuple[int, int],
    mode: str,
    rotations: list[float],
    scales: list[float],
) -> tuple[list[float], list[float]]:
    """The rotations and scales of a search that the template and image can take, keeping the most (angle,
    scale) pairs.

    A scale that shrinks the template below 2 pixels never fits. In mode "valid" the turned and scaled template's
    canvas must also lie within the image, and one canvas holds every angle: the angles whose largest fitting
    scale is highest are kept first, as many as leave the most pairs.
    """
    from .banks import usable_scales

    room = tuple(image_size) if mode == "valid" else None
    low = usable_scales(template_size, [0.0], None)[0]
    scales = [s for s in scales if s >= low]
    highest = {angle: usable_scales(template_size, [angle], room)[1] for angle in rotations}
    best: tuple[int, float] = (0, -math.inf)  # (pairs searched, the largest scale allowed)
    for limit in sorted(set(highest.values()), reverse=True):
        angles = sum(high >= limit for high in highest.values())
        pairs = angles * sum(s <= limit for s in scales)
        if pairs > best[0]:
            best = (pairs, limit)
    if best[0] == 0:
        return [], []
    limit = best[1]
    return [a for a in rotations if highest[a] >= limit], [s for s in scales if s <= limit]


def _warn(message: str) -> None:
    print(f"slidesim: warning: {message}", file=sys.stderr)


def _values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _search(args: argparse.Namespace, image_shape, template_size: tuple[int, int], names: list[str]) -> dict:
    """The rotations, scales and k of match for templates of one size: transforms that cannot fit are left out
    with a warning (an error when none fits), and --all asks for every peak above the threshold."""
    from ._checks import check_factors

    # the API's checks first (finite angles, positive scales), so that only values that could fit are skipped
    rotations = parse_range(args.rotations, "rotations", False) if args.rotations else None
    scales = parse_range(args.scales, "scales", True) if args.scales else None
    if not isinstance(rotations, Interval):
        rotations = check_factors("rotations", rotations, False)
    if not isinstance(scales, Interval):
        scales = check_factors("scales", scales, True)
    image_size = tuple(int(n) for n in image_shape[-2:])
    ranged = isinstance(rotations, Interval) or isinstance(scales, Interval)
    if ranged:
        rotations, scales = _fitting_ranges(args, template_size, image_size, rotations, scales, names)
    elif rotations is not None or scales is not None:
        asked_angles, asked_scales = rotations or [0.0], scales or [1.0]
        angles, factors = _fitting_transforms(template_size, image_size, args.mode, asked_angles, asked_scales)
        which = f"template{'s' if len(names) > 1 else ''} {', '.join(names)} ({template_size[0]}x{template_size[1]})"
        where = f"the {image_size[0]}x{image_size[1]} image in --mode {args.mode}"
        if not angles:
            inside = " and its turned, scaled canvas within the image; use smaller scales or --mode same"
            raise SlidesimValueError(
                f"no rotation and scale asked for fits {which} on {where}: scales must keep it at 2 pixels or more"
                + (inside if args.mode == "valid" else "")
            )
        skipped_angles = [a for a in asked_angles if a not in angles]
        skipped_scales = [s for s in asked_scales if s not in factors]
        if skipped_scales and scales is not None:
            usable = f"{min(factors):g} to {max(factors):g}" if len(factors) > 1 else f"{factors[0]:g}"
            _warn(f"skipped --scales {_values(skipped_scales)}: of those asked, {usable} fit {which} on {where}")
        if skipped_angles and rotations is not None:
            _warn(f"skipped --rotations {_values(skipped_angles)}, which turn {which} beyond {where}")
        rotations = angles if rotations is not None else None
        scales = factors if scales is not None else None
    k = args.top or 1
    if getattr(args, "all", False):
        from .banks import canvas_size

        angles, factors = searched_grid(template_size, rotations, scales)
        canvas = canvas_size(*template_size, angles, factors)
        k = (image_size[0] + canvas[0]) * (image_size[1] + canvas[1])  # at least the positions of any score map
    return {"rotations": rotations, "scales": scales, "k": k}


def searched_grid(
    template_size: tuple[int, int], rotations: list[float] | Interval | None, scales: list[float] | Interval | None
) -> tuple[list[float], list[float]]:
    """The angles and scales that match scores for templates of ``template_size``: the values given, or the grid
    that a range (``slidesim.interval``) is sampled on for this template size (its canvas and heat maps)."""
    from .pose_search import pose_space

    space = pose_space(
        template_size,
        None if isinstance(rotations, Interval) else rotations,
        None if isinstance(scales, Interval) else scales,
        rotations if isinstance(rotations, Interval) else None,
        scales if isinstance(scales, Interval) else None,
    )
    return space.angles, space.scales


def _fitting_ranges(
    args: argparse.Namespace,
    template_size: tuple[int, int],
    image_size: tuple[int, int],
    rotations: list[float] | Interval | None,
    scales: list[float] | Interval | None,
    names: list[str],
) -> tuple[list[float] | Interval | None, list[float] | Interval | None]:
    """Rotations and scales of which one at least is a range, kept to the scales that the template and image can
    take at every angle: a scale range is narrowed, listed scales are skipped (both with a warning); a range of
    angles is searched whole, so no fitting scale is an error."""
    from .banks import usable_scales

    angles, _ = searched_grid(template_size, rotations, None)
    room = tuple(image_size) if args.mode == "valid" else None
    low, high = usable_scales(template_size, angles, room)
    which = f"template{'s' if len(names) > 1 else ''} {', '.join(names)} ({template_size[0]}x{template_size[1]})"
    where = f"the {image_size[0]}x{image_size[1]} image in --mode {args.mode}"
    turns = " at every angle of --rotations" if isinstance(rotations, Interval) else ""
    asked = scales if scales is not None else [1.0]
    if isinstance(asked, Interval):
        start, stop = max(asked.start, low), min(asked.stop, high)
        fits = stop > start
    else:
        kept_values = [s for s in asked if low <= s <= high]
        fits = bool(kept_values)
    if not fits:
        inside = " and its turned, scaled canvas within the image; use smaller scales or --mode same"
        raise SlidesimValueError(
            f"no scale asked for fits {which} on {where}{turns}: scales must keep it at 2 pixels or more"
            + (inside if args.mode == "valid" else "")
        )
    usable = f"{_shown_scale(low)} to {_shown_scale(high)}" if high < math.inf else f"{_shown_scale(low)} up"
    if isinstance(asked, Interval):
        if (start, stop) == (asked.start, asked.stop):
            return rotations, scales
        _warn(
            f"narrowed --scales {asked.start:g}:{asked.stop:g} to {start:.4g}:{stop:.4g}: of those asked, {usable} "
            f"fit {which} on {where}{turns}"
        )
        return rotations, interval(start, stop)
    skipped = [s for s in asked if s not in kept_values]
    if skipped and scales is not None:
        _warn(f"skipped --scales {_values(skipped)}: of those asked, {usable} fit {which} on {where}{turns}")
    return rotations, (kept_values if scales is not None else None)


def _shown_scale(value: float) -> str:
    return "any" if math.isinf(value) else f"{value:.4g}"


def _lazy(args: argparse.Namespace) -> bool:
    """Whether the image runs through slidesim.dask: zarr, large TIFF, or a chunk size or cluster asked for."""
    from .imageio import is_lazy

    wanted = getattr(args, "chunk", None) or getattr(args, "workers", None) or getattr(args, "scheduler", None)
    return bool(wanted) or is_lazy(args.image)


class _Group(NamedTuple):
    """Templates of one size, scored in one call (which shares the image side of the work)."""

    indices: list[int]  # positions of the templates on the command line
    bank: np.ndarray  # [T, C, h, w]
    mask: np.ndarray | None  # [h, w] (the --mask file alone), [T, 1, h, w] (with alpha), or None


def _load(args: argparse.Namespace) -> tuple[object, list[_Group], list[str], list]:
    """(image [B, C, H, W], groups of same-size templates, labels, sizes); the image is a lazy dask array for zarr
    and large TIFF inputs. Every file is on read_image's scale, so bit depths may differ."""
    from .imageio import open_lazy, read_image, read_mask, read_template

    image = open_lazy(args.image, getattr(args, "chunk", None)) if _lazy(args) else read_image(args.image)
    if args.grey:
        image = _grey(image)
    mask_file = read_mask(args.mask) if args.mask is not None else None
    templates, alphas, labels = [], [], []
    for name in args.templates:
        template, alpha = read_template(name, alpha=not args.ignore_alpha)
        if mask_file is not None and mask_file.shape != template.shape[-2:]:
            raise SlidesimValueError(
                f"`--mask` {args.mask!r} is {mask_file.shape[0]}x{mask_file.shape[1]} pixels; template {name!r} is "
                f"{template.shape[-2]}x{template.shape[-1]}: a mask file needs templates of its size"
            )
        template = _grey(template) if args.grey else template
        _check_channels(image.shape[1], template.shape[1], args.image, name)
        templates.append(template[0])
        alphas.append(alpha)
        labels.append(Path(name).name)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, template in enumerate(templates):
        groups.setdefault(template.shape[-2:], []).append(index)
    banks = [
        _Group(indices, np.stack([templates[i] for i in indices]), _group_mask([alphas[i] for i in indices], mask_file))
        for indices in groups.values()
    ]
    return image, banks, labels, [t.shape[-2:] for t in templates]


def _grey(picture):
    """Images [B, C, H, W] (numpy or dask) as grey [B, 1, H, W]: the mean of their channels, as the API's advice
    for a grey template on colour images does."""
    return picture if picture.shape[1] == 1 else picture.mean(axis=1, keepdims=True, dtype=np.float32)


def _check_channels(image_channels: int, template_channels: int, image: str, template: str) -> None:
    """Refuse a grey template on a colour image or the reverse, as the API does, with the option that converts."""
    if image_channels == template_channels:
        return
    kind = {1: "grey", 3: "colour"}
    raise SlidesimValueError(
        f"template file {template!r} is {kind.get(template_channels, template_channels)} ({template_channels} "
        f"channel{'s' if template_channels != 1 else ''}) and image file {image!r} is "
        f"{kind.get(image_channels, image_channels)} ({image_channels}): pass --grey to compare both in grey "
        "(the mean of their channels), or save them with the same colours"
    )


def _group_mask(alphas: list[np.ndarray | None], mask_file: np.ndarray | None) -> np.ndarray | None:
    """The mask of templates of one size: each template's alpha weights [h, w] (or None) times the --mask file's
    [h, w] (or None). Without alpha the mask file is shared as it is; opaque templates in a group with a
    transparent one get weight 1 (or the file's)."""
    if all(alpha is None for alpha in alphas):
        return mask_file
    shape = next(alpha.shape for alpha in alphas if alpha is not None)
    file_weights = mask_file if mask_file is not None else np.ones(shape, np.float32)
    weights = [file_weights * (alpha if alpha is not None else 1.0) for alpha in alphas]
    return np.stack(weights)[:, None].astype(np.float32)  # [T, 1, h, w]: one mask per template, every channel


@contextmanager
def _scheduler(args: argparse.Namespace):
    """The dask scheduler of a lazy run: an existing cluster (--scheduler), a local one (--workers), or dask's
    threads."""
    if not (args.scheduler or args.workers):
        yield
        return
    import distributed

    with contextlib.ExitStack() as stack:
        if args.scheduler:
            client = stack.enter_context(distributed.Client(args.scheduler))
        else:
            cluster = stack.enter_context(
                distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
            )
            client = stack.enter_context(distributed.Client(cluster))
        if not args.quiet and sys.stderr.isatty():
            print(f"slidesim: dask cluster {client.scheduler.address}", file=sys.stderr)
        yield


def _run_match(args: argparse.Namespace) -> int:
    image, banks, labels, sizes = _load(args)
    lazy = not isinstance(image, np.ndarray)
    _check_pictures(args, lazy)
    options = {
        **_options(args),
        "threshold": args.threshold,
        "min_distance": args.min_distance,
        "subpixel": not args.no_subpixel,
    }
    pose = pose_options(args)
    rows, maps = [], [None] * len(labels)
    transforms: list[dict] = [{}] * len(labels)  # the rotations and scales that each template's map was scored with
    with _scheduler(args) if lazy else contextlib.nullcontext():
        for indices, bank, mask in banks:  # templates of one size share a call (and the image side of it)
            search = _search(args, image.shape, bank.shape[-2:], [labels[i] for i in indices])
            angles, factors = searched_grid(bank.shape[-2:], search["rotations"], search["scales"])
            for index in indices:  # the grids that the maps were scored on (a range's for this template size)
                transforms[index] = {
                    "rotations": None if search["rotations"] is None else angles,
                    "scales": None if search["scales"] is None else factors,
                }
            if lazy:
                from .dask import match as lazy_match

                _check_lazy_search(args, search)

                progress = not args.quiet and sys.stderr.isatty()
                found = lazy_match(image, bank, mask=mask, progress=progress, **options, **search)
            else:
                from .matching import match

                found = match(image, bank, mask=mask, progress=_progress(args.quiet), **pose, **options, **search)
                for position, index in enumerate(indices):
                    maps[index] = None if found.maps is None else found.maps[0, position]
            rows.extend({**row, "template": indices[row["template"]]} for row in found.to_records())
    rows.sort(key=lambda row: (row["batch"], row["template"]))  # stable: best first within each
    print(_emit(rows, labels, Path(args.image).name, "json" if args.json else "csv" if args.csv else "table"))
    if not lazy:  # a lazy image has no pictures (refused above)
        first = [row for row in rows if row["batch"] == 0]
        _draw_pictures(args, image[0], maps, first, sizes, labels, transforms)
    return 0


def _check_lazy_search(args: argparse.Namespace, search: dict) -> None:
    """Refuse what a lazy image's chunk-by-chunk exhaustive search cannot do: ranges and the pyramid."""
    ranges = [f"--{name}" for name in ("rotations", "scales") if isinstance(search[name], Interval)]
    if ranges:
        raise SlidesimValueError(
            f"{' and '.join(ranges)} START:STOP (a continuous range) is searched in memory; this image is opened "
            "lazily (zarr, a large TIFF, --chunk, --workers or --scheduler): give START:STOP:STEP or a list instead"
        )
    if args.search == "pyramid" or args.levels is not None:
        raise SlidesimValueError(
            "--search pyramid and --levels search images in memory; this image is opened lazily (zarr, a large "
            "TIFF, --chunk, --workers or --scheduler) and searched exhaustively, chunk by chunk"
        )


PICTURES = ("overlay", "heatmap", "figure")
"""The picture options of ``slidesim match``."""


def _check_pictures(args: argparse.Namespace, lazy: bool) -> None:
    """Refuse picture options that cannot be honoured before the (possibly long) search runs."""
    from .draw import picture_format

    asked = [name for name in PICTURES if getattr(args, name)]
    if lazy and asked:
        raise SlidesimValueError(
            "--overlay, --heatmap and --figure draw in-memory images; this image is opened lazily (zarr, a large "
            "TIFF, --chunk, --workers or --scheduler)"
        )
    for name in asked:
        picture_format(getattr(args, name), f"--{name}")


def _draw_pictures(
    args: argparse.Namespace,
    image: np.ndarray,
    maps: list,
    rows: list[dict],
    sizes: list,
    labels: Sequence[str],
    transforms: list[dict],
) -> None:
    """Write the pictures asked for, of the first image (page) and its matches, on the image's pixel grid;
    ``transforms`` holds the rotations and scales of each template's map (they differ where some did not fit)."""
    from .draw import draw_figure, draw_heatmap, draw_overlay

    geometry = {
        "mode": args.mode,
        "stride": args.stride,
        "rotations": [t["rotations"] for t in transforms],
        "scales": [t["scales"] for t in transforms],
    }
    if args.overlay:
        draw_overlay(args.overlay, image, rows, sizes, labels, max_size=args.max_size)
    scored = (image, maps, rows, sizes, labels, args.metric)
    if args.heatmap:
        draw_heatmap(args.heatmap, *scored, max_size=args.max_size, **geometry)
    if args.figure:
        draw_figure(args.figure, *scored, max_size=args.max_size, **geometry)


def _run_explain(args: argparse.Namespace) -> int:
    from .matching import describe
    from .planner import explain

    image, banks, labels, _ = _load(args)
    options = _options(args)
    full_shape = image.shape
    lazy = not isinstance(image, np.ndarray)
    if lazy:  # a lazy image: every chunk is one in-memory call
        image = np.asarray(image.rechunk({1: -1}).blocks[0, 0, 0, 0].compute())
        print(f"the image is read lazily; each chunk is one call, planned as this first chunk {image.shape}:")
    for indices, bank, mask in banks:
        if len(banks) > 1:
            print(f"templates {', '.join(labels[i] for i in indices)}:")
        search = _search(args, full_shape, bank.shape[-2:], [labels[i] for i in indices])
        if lazy:
            _check_lazy_search(args, search)
        elif search["rotations"] is not None or search["scales"] is not None or args.search != "auto":
            # what match's pose search would do: pyramid or exhaustive, why, and roughly at what cost
            pose = {**pose_options(args), "threshold": args.threshold, "min_distance": args.min_distance}
            lines, _ = describe(image, bank, mask=mask, **options, **pose, **search)
            print("\n".join(in_cli_terms(line) for line in lines))
        if search["rotations"] is not None or search["scales"] is not None:
            angles, factors = searched_grid(bank.shape[-2:], search["rotations"], search["scales"])
            bank, mask = _drawn_bank(bank, mask, angles, factors)
        print(explain(image, bank, mask=mask, **options))
    return 0


_EXPLAINED_BANK_BYTES = 64 * 2**20  # explain draws at most this much of a turned and scaled bank to plan it


def _drawn_bank(bank: np.ndarray, mask, angles: list[float], scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The turned and scaled templates that match scores, [N, C, Hc, Wc] with their weights: the whole bank, or
    (when it is large) its first transforms, as match streams a large bank a chunk at a time."""
    import torch

    from .banks import TransformStream

    templates = torch.from_numpy(bank)[None]  # [1, T, C, h, w]
    weights = None
    if mask is not None:
        weights = torch.from_numpy(np.asarray(mask, np.float32))
        weights = weights[None, None, None] if weights.ndim == 2 else weights[None]  # [1, T|1, 1, h, w]
    stream = TransformStream(templates, weights, angles, scales)
    members = max(1, min(stream.members, _EXPLAINED_BANK_BYTES // max(1, stream.member_bytes())))
    if members < stream.members:
        print(f"planned for the first {members} of the {stream.members} turned and scaled templates (one chunk)")
    pictures, drawn = stream.draw(0, members)
    return pictures[0].numpy(), drawn[0].numpy()


def demo_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """A smooth random RGB scene [1, 3, 240, 320], four 24 × 32 templates cut from it (noisy copies, the last one
    turned by 40° and cut from the turned scene), and each template's true (y, x, angle)."""
    import torch

    from .banks import transform_bank

    rng = np.random.default_rng(seed)
    coarse = rng.random((3, 16, 20))
    scene = np.kron(coarse, np.ones((15, 16)))  # blocky colour field
    yy, xx = np.mgrid[0:240, 0:320] / 40.0
    scene += 0.25 * np.sin(xx * 3 + yy) + 0.05 * rng.standard_normal((3, 240, 320))
    scene = np.clip(scene, 0, None).astype(np.float32)[None]
    corners = [(30, 40), (120, 200), (180, 60)]
    bank = [scene[0, :, y : y + 24, x : x + 32] for y, x in corners]
    truth = [(y + 11.5, x + 15.5, 0.0) for y, x in corners]
    # the fourth template: the 60 × 60 neighbourhood of (89.5, 119.5) turned by −40° and cut to 24 × 32 around its
    # centre, so the scene holds it turned by 40° (the canvas keeps the even size, centre c + 0.5)
    patch = torch.from_numpy(scene[0, :, 60:120, 90:150].astype(np.float64))
    turned = transform_bank(patch[None, None], None, [-40.0], [1.0]).templates[0, 0].numpy()
    c = (turned.shape[-1] - 1) // 2
    bank.append(turned[:, c - 11 : c + 13, c - 15 : c + 17].astype(np.float32))
    truth.append((89.5, 119.5, 40.0))
    bank = np.stack(bank) + 0.02 * rng.standard_normal((4, 3, 24, 32)).astype(np.float32)
    return scene, bank.astype(np.float32), truth


def _run_demo(args: argparse.Namespace) -> int:
    from .matching import match

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene, bank, truth = demo_scene()
    labels = ["template 0", "template 1", "template 2", "template 3 (turned)"]
    print(
        f"slidesim {__version__} demo: {bank.shape[0]} templates {bank.shape[2]}x{bank.shape[3]} (3 channels, noisy "
        f"copies; the last one turned) on a {scene.shape[2]}x{scene.shape[3]} RGB scene; zncc, rotations every 10°\n"
    )
    start = time.perf_counter()
    found = match(scene, bank, rotations=range(0, 360, 10), progress=_progress(args.quiet), search="exhaustive")
    elapsed = time.perf_counter() - start
    rows = found.rows()
    print(f"{'template':<20} {'true (y, x, angle)':>22} {'found (y, x, angle)':>24} {'score':>7}")
    for row in rows:
        ty, tx, ta = truth[row["template"]]
        true = f"({ty:.1f}, {tx:.1f}, {ta:.0f})"
        seen = "({:.1f}, {:.1f}, {:.0f})".format(row["y"], row["x"], row["angle"])
        print(f"{labels[row['template']]:<20} {true:>22} {seen:>24} {row['score']:>7.3f}")
    print(f"\nmatch: {elapsed:.2f} s for {bank.shape[0]} templates x 36 rotations")
    from .draw import draw_figure, draw_heatmap, draw_overlay

    sizes = [tuple(bank.shape[-2:])] * len(bank)
    scored = (scene[0], list(found.maps[0]), rows, sizes, labels, "zncc")
    rotations = {"rotations": list(range(0, 360, 10))}  # the maps' windows: the canvas of the turned bank
    draw_overlay(out / "overlay.png", scene[0], rows, sizes, labels)
    draw_heatmap(out / "heatmap.png", *scored, **rotations)
    draw_figure(out / "figure.png", *scored, **rotations)
    print(f"pictures: {out / 'overlay.png'}, {out / 'heatmap.png'}, {out / 'figure.png'}")
    return 0


def _add_problem_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image",
        help="image file (PNG, JPEG, TIFF; the pages of a multi-page TIFF are a batch) or zarr array; zarr and TIFF "
        "files above 512 MiB are read lazily, chunk by chunk, through dask; its alpha channel is dropped",
    )
    parser.add_argument(
        "templates",
        nargs="+",
        metavar="TEMPLATE",
        help="template files (any sizes); a template's alpha channel is its mask",
    )
    parser.add_argument("--metric", default="zncc", help=f"similarity: {METRIC_CHOICES}; default zncc")
    parser.add_argument(
        "--mask", help="template mask file: pixels that are not zero count (times a template's alpha weights)"
    )
    parser.add_argument(
        "--ignore-alpha",
        action="store_true",
        help="match the colour values of templates' transparent pixels too (by default a template's alpha is its "
        "mask: weight alpha / full alpha, so transparent pixels do not count and partly transparent ones in part)",
    )
    parser.add_argument(
        "--grey",
        action="store_true",
        help="compare in grey: the image and the templates become the mean of their channels (needed for a colour "
        "template on a grey image, or the reverse)",
    )
    parser.add_argument(
        "--mode",
        choices=("valid", "same", "full"),
        default="valid",
        help="valid: the template lies inside the image (default); same: a score at every pixel, the template may "
        "overhang the edges; full: every overlap. same and full pad the image with zeros and accept templates "
        "larger than the image",
    )
    parser.add_argument("--stride", type=int, default=1, help="step between scored positions (default 1)")
    parser.add_argument("--method", default="auto", help="engine: auto, numba, triton, conv, fft, direct, reference")
    parser.add_argument(
        "--memory-limit",
        type=memory_size,
        help="bytes of temporaries a call may use, such as 512M (the default) or 2G",
    )


def _picture_side(text: str) -> int:
    """--max-size: a whole number of pixels, 16 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, 16 or more; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slidesim", description="Slide templates over images and score every position.")
    parser.add_argument("--version", action="version", version=f"slidesim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    found = commands.add_parser(
        "match",
        help="find templates in an image",
        description=MATCH_DESCRIPTION,
        epilog=MATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_match_arguments(found)
    found.set_defaults(run=_run_match)

    plan = commands.add_parser(
        "explain",
        help="print the planner's choice for a problem",
        description=f"Print the planner's choice for the call that match would make: every option of match is "
        f"accepted (those that only shape match's output, such as --json or --overlay, change nothing here). {FILES}",
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_match_arguments(plan)
    plan.set_defaults(run=_run_explain)

    demo = commands.add_parser("demo", help="find templates in a built-in scene, print them and draw pictures")
    demo.add_argument("--out", default="slidesim-demo", help="folder for the pictures (default slidesim-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_run_demo)
    return parser


def _add_match_arguments(found: argparse.ArgumentParser) -> None:
    """The arguments of match (explain takes the same, to plan the call match would make)."""
    _add_problem_arguments(found)
    found.add_argument("--top", type=int, help="matches per template, best first (default 1)")
    found.add_argument(
        "--threshold",
        type=float,
        help="keep matches at least this good: scores >= it, or <= it for the distances sad, mad, ssd, ssd_normed",
    )
    found.add_argument(
        "--all", action="store_true", help="every match that passes --threshold (needs --threshold; not with --top)"
    )
    found.add_argument(
        "--min-distance", type=int, help="pixels between two matches (default: half the template's smaller side)"
    )
    found.add_argument(
        "--rotations",
        help="angles in degrees: START:STOP, every angle between (0:360 the whole circle; the search picks the "
        "step from the template's size and refines the angle below it), or exactly the angles START:STOP:STEP "
        "(STOP excluded) or a,b,c; listed angles that turn the template beyond the image (--mode valid) are skipped "
        "with a warning",
    )
    found.add_argument(
        "--scales",
        help="scale factors: START:STOP, every scale between (e.g. 0.8:1.25), or exactly START:STOP:STEP (STOP "
        "included) or a,b,c; scales that do not fit (below 2 pixels, or beyond the image in --mode valid) are "
        "skipped, or a range narrowed, with a warning",
    )
    found.add_argument(
        "--search",
        choices=("auto", "pyramid", "exhaustive"),
        default="auto",
        help="exhaustive: every pose of the grid at every position (the exact best of the grid); pyramid: coarse to "
        "fine, much faster for ranges, exact scores at the poses found but it may miss one; auto (default): the "
        "pyramid for START:STOP ranges where it is estimated cheaper, else exhaustive (and always exhaustive with "
        "--heatmap or --figure, which draw its score maps)",
    )
    found.add_argument(
        "--levels",
        type=int,
        metavar="N",
        help="halvings of the pyramid (implies --search pyramid; default: as many as keep the template's smaller "
        "side at 12 pixels or more)",
    )
    found.add_argument(
        "--beam",
        type=int,
        metavar="N",
        help=(
            "positions per template carried down the pyramid from its coarsest level (default max(8, 2 x --top), "
            "twice that with --scales)"
        ),
    )
    found.add_argument(
        "--no-subpixel",
        action="store_true",
        help="report the best whole-pixel positions, without refining them on the image data (faster for many matches)",
    )
    output = found.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON (the table's columns) instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV (the table's columns) instead of a table")
    pictures = found.add_argument_group(
        "pictures (of the first image; PNG, JPEG or TIFF by the file's extension; at the image's own size)"
    )
    pictures.add_argument(
        "--overlay", help="write the image with the matches drawn as (turned) boxes, labelled with name and score"
    )
    pictures.add_argument(
        "--heatmap",
        help="write each template's best score per template centre, on the image's pixel grid, matches ringed in "
        "magenta; best scores are bright for every metric",
    )
    pictures.add_argument("--figure", help="write the overlay and the heatmaps side by side")
    pictures.add_argument(
        "--max-size", type=_picture_side, metavar="N", help="shrink pictures so that their longer side is N pixels"
    )
    found.add_argument("--quiet", action="store_true", help="no progress bar")
    lazy = found.add_argument_group("large images (through dask; pip install 'slidesim[dask]')")
    lazy.add_argument("--chunk", type=int, help="read the image lazily in chunks of this many pixels a side")
    cluster = lazy.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, help="start a local dask cluster with this many worker processes")
    cluster.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://10.0.0.5:8786")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slidesim`` command. Returns the process exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # pointed to the command's own help, which lists its options
        extra = " ".join(unknown)
        parser.exit(2, f"slidesim: error: unrecognized arguments: {extra} (see slidesim {args.command} --help)\n")
    try:
        if args.command in ("match", "explain"):
            _check_arguments(args)
        return int(args.run(args))
    except (SlidesimError, OSError) as error:
        print(f"slidesim: error: {in_cli_terms(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
