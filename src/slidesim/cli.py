"""Command line (floor L7): ``slidesim match``, ``slidesim demo`` and ``slidesim explain`` (also ``python -m
slidesim``).

The front end reads files, calls the public API and prints or draws what it returns; it holds no numerical code.
Bad input (a missing or unreadable file, a template larger than the image, an unknown metric, a malformed range)
prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other input error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"slidesim: error: {message} (see slidesim {self.prog.split()[-1]} --help)\n")


def parse_range(text: str, name: str, inclusive: bool) -> list[float]:
    """Values from "START:STOP:STEP", "a,b,c" or one number.

    Ranges include STOP when ``inclusive`` (scales: 0.8:1.25:0.05 ends at 1.25) and exclude it otherwise
    (rotations: 0:360:5 ends at 355, as Python's range).
    """
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
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
            f"`--{name}` must be START:STOP:STEP, a comma-separated list or one number; got {text!r}"
        ) from None


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
    return {"metric": args.metric, "stride": args.stride, "method": args.method}


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
    from .imageio import match_channels, open_lazy, read_image, read_mask, read_template

    image = open_lazy(args.image, getattr(args, "chunk", None)) if _lazy(args) else read_image(args.image)
    mask_file = read_mask(args.mask) if args.mask is not None else None
    templates, alphas, labels = [], [], []
    for name in args.templates:
        template, alpha = read_template(name, alpha=not args.ignore_alpha)
        if mask_file is not None and mask_file.shape != template.shape[-2:]:
            raise SlidesimValueError(
                f"`--mask` {args.mask!r} is {mask_file.shape[0]}x{mask_file.shape[1]} pixels; template {name!r} is "
                f"{template.shape[-2]}x{template.shape[-1]}: a mask file needs templates of its size"
            )
        templates.append(match_channels(image, template, name)[0])
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
    rotations = parse_range(args.rotations, "rotations", inclusive=False) if args.rotations else None
    scales = parse_range(args.scales, "scales", inclusive=True) if args.scales else None
    options = {
        **_options(args),
        "k": args.top,
        "threshold": args.threshold,
        "min_distance": args.min_distance,
        "rotations": rotations,
        "scales": scales,
    }
    rows, maps = [], [None] * len(labels)
    with _scheduler(args) if lazy else contextlib.nullcontext():
        for indices, bank, mask in banks:  # templates of one size share a call (and the image side of it)
            if lazy:
                from .dask import match as lazy_match

                progress = not args.quiet and sys.stderr.isatty()
                found = lazy_match(image, bank, mask=mask, progress=progress, **options)
            else:
                from .matching import match

                found = match(image, bank, mask=mask, progress=_progress(args.quiet), **options)
                for position, index in enumerate(indices):
                    maps[index] = found.maps[0, position]
            rows.extend({**row, "template": indices[row["template"]]} for row in found.to_records())
    rows.sort(key=lambda row: (row["batch"], row["template"]))  # stable: best first within each
    print(_emit(rows, labels, Path(args.image).name, "json" if args.json else "csv" if args.csv else "table"))
    if not lazy:  # a lazy image has no pictures (refused above)
        first = [row for row in rows if row["batch"] == 0]
        _draw_pictures(args, image[0], maps, first, sizes, labels, {"rotations": rotations, "scales": scales})
    return 0


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
    transforms: dict,
) -> None:
    """Write the pictures asked for, of the first image (page) and its matches, on the image's pixel grid."""
    from .draw import draw_figure, draw_heatmap, draw_overlay

    geometry = {"mode": getattr(args, "mode", None) or "valid", "stride": args.stride, **transforms}
    if args.overlay:
        draw_overlay(args.overlay, image, rows, sizes, labels, max_size=args.max_size)
    scored = (image, maps, rows, sizes, labels, args.metric)
    if args.heatmap:
        draw_heatmap(args.heatmap, *scored, max_size=args.max_size, **geometry)
    if args.figure:
        draw_figure(args.figure, *scored, max_size=args.max_size, **geometry)


def _run_explain(args: argparse.Namespace) -> int:
    from .planner import explain

    image, banks, labels, _ = _load(args)
    options = _options(args)
    if not isinstance(image, np.ndarray):  # a lazy image: every chunk is one in-memory call
        image = np.asarray(image.rechunk({1: -1}).blocks[0, 0, 0, 0].compute())
        print(f"the image is read lazily; each chunk is one call, planned as this first chunk {image.shape}:")
    for indices, bank, mask in banks:
        if len(banks) > 1:
            print(f"templates {', '.join(labels[i] for i in indices)}:")
        print(explain(image, bank, mask=mask, **options))
    return 0


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
    found = match(scene, bank, rotations=range(0, 360, 10), progress=_progress(args.quiet))
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
    parser.add_argument("--stride", type=int, default=1, help="step between scored positions (default 1)")
    parser.add_argument("--method", default="auto", help="engine: auto, numba, triton, conv, fft, direct, reference")


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

    found = commands.add_parser("match", help="find templates in an image", description=MATCH_DESCRIPTION)
    _add_problem_arguments(found)
    found.add_argument("--top", type=int, default=1, help="matches per template (default 1)")
    found.add_argument("--threshold", type=float, help="keep matches at least this good")
    found.add_argument("--min-distance", type=int, help="pixels between matches (default: half the template)")
    found.add_argument("--rotations", help="angles in degrees, START:STOP:STEP (STOP excluded) or a,b,c")
    found.add_argument("--scales", help="scale factors, START:STOP:STEP (STOP included) or a,b,c")
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
    found.set_defaults(run=_run_match)

    plan = commands.add_parser(
        "explain", help="print the planner's choice for a problem", description=f"Print the planner's choice. {FILES}"
    )
    _add_problem_arguments(plan)
    plan.set_defaults(run=_run_explain)

    demo = commands.add_parser("demo", help="find templates in a built-in scene, print them and draw pictures")
    demo.add_argument("--out", default="slidesim-demo", help="folder for the pictures (default slidesim-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slidesim`` command. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (SlidesimError, OSError) as error:
        print(f"slidesim: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
