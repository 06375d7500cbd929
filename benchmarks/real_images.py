"""slidesim on real uint8 pictures against OpenCV, scikit-image and corrmatch, side by side in one process.

Run: python benchmarks/real_images.py [--quick] [--load] [--cases REGEX] [--write [--report PATH]]

The scenes (benchmarks/scenes.py): a rendered 1920×1080 desktop screenshot, six photographs of skimage.data and a
scanned-looking page, as uint8 grey and (where they have colour) uint8 RGB: BGR [H, W, 3] for OpenCV, [1, 3, H, W]
for slidesim. Templates are cut from them at fixed seeds (8² to 128² and a 24×80 strip).

Cases:

* scores: ``slidesim.similarity`` for every metric that OpenCV's matchTemplate has (ssd, ssd_normed, ccorr, ncc,
  ccoeff, zncc = TM_SQDIFF, TM_SQDIFF_NORMED, TM_CCORR, TM_CCORR_NORMED, TM_CCOEFF, TM_CCOEFF_NORMED) against
  cv2.matchTemplate, zncc also against skimage.feature.match_template; sad and l1_similarity, which OpenCV does not
  have, against the fastest OpenCV method on the same inputs (for context only: not the same computation).
* match: ``slidesim.match(image, template, threshold=0.95, k=50)`` (with and without sub-pixel refinement) against
  the code people write with OpenCV (matchTemplate, np.argwhere(scores >= threshold), greedy suppression by score
  within half the template's smaller side) and against corrmatch's coarse-to-fine top-k search (uint8 grey only);
  k=1 against matchTemplate + minMaxLoc and corrmatch's best match. The instances found are compared with
  OpenCV's.

Every slidesim case also reports the planner's estimate for the engine it picks (``slidesim.plan``) against the time
measured; the project's target is an estimate within 1.5× of the measured time.

Time: the tools of a case run in interleaved rounds after one warm-up call each, and each keeps its best round, so a
slow spell of the shared machine hits all of them alike. Every other round runs in reverse order (A, B, C, then C,
B, A), so no tool always runs right after the same one: a call that leaves the caches cold and returns its memory to
the system (scikit-image's FFTs of the whole image) slows whichever call comes next by up to 2× on the small
pictures, through cache misses and page faults. A tool whose calls have used up the per-case budget stops early (its
best round so far stands; a warm-up call over the budget is the one timing); quick cases run more rounds, as many as
take about a second (up to 40), so that the noise of the shared machine does not decide the best of a few
millisecond calls. With --load one other CPU-bound process (a numpy matrix-product loop on one thread) runs beside
the benchmark; it is paused while each case runs idle and resumed while the same case runs again loaded, so the two
runs of a case follow each other, and it is killed at the end, on Ctrl-C and if this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import functools
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import slidesim
from slidesim.metrics import METRICS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import scenes  # noqa: E402

REPORT = ROOT / "BENCHMARKS.md"
START, END = "<!-- real-images:start -->", "<!-- real-images:end -->"
LOADED_MARKERS = ("<!-- real-images-loaded:start -->", "<!-- real-images-loaded:end -->")  # --load's own section
THRESHOLD = 0.95
K = 50
THREADS = 2

CV2_METHODS = {spec.name: spec.opencv for spec in METRICS.values() if spec.opencv}  # ssd -> "TM_SQDIFF", ...
NO_CV2 = ("sad", "l1_similarity")
CORRMATCH_SHALLOW = "corrmatch, 2 levels"  # its default 6-level pyramid misses small templates' matches
NORMALIZED = ("ssd_normed", "ncc", "zncc")  # scores in [-1, 1] or [0, 1]: compared in absolute terms


# ----------------------------------------------------------------------------------------------------- timing


MAX_ROUNDS = 40


@dataclass
class Budget:
    """How long each tool of a case may be timed."""

    rounds: int  # best of at least this many interleaved rounds (after the warm-up call)
    seconds: float  # a tool stops early once its calls of one case have taken this long
    case_seconds: float = 0.0  # more rounds for quick cases: as many as fit this time, up to MAX_ROUNDS

    def rounds_for(self, warm_up_seconds: float) -> int:
        """Rounds for a case whose warm-up calls took ``warm_up_seconds`` together: the fixed count, or more for
        quick cases, whose best of a few millisecond calls the shared machine's noise would otherwise decide."""
        extra = int(self.case_seconds / max(warm_up_seconds, 1e-6))
        return max(self.rounds, min(MAX_ROUNDS, extra))


def race(tools: dict[str, Callable[[], object]], budget: Budget) -> tuple[dict[str, float], dict[str, object]]:
    """Best time in ms of each tool, timed in interleaved rounds after one warm-up call each, and what each
    warm-up call returned (to compare the results without calling again).

    A tool whose warm-up call alone took longer than the budget is not called again: its warm-up time stands
    (the warm-up's extra cost is small beside such a call).
    """
    best = dict.fromkeys(tools, float("inf"))
    spent = dict.fromkeys(tools, 0.0)
    results = {}
    for name, call in tools.items():  # warm-up: FFT plans, caches, first touches
        start = time.perf_counter()
        results[name] = call()
        spent[name] = time.perf_counter() - start
        if spent[name] > budget.seconds:
            best[name] = spent[name] * 1e3
    for round_ in range(budget.rounds_for(sum(spent.values()))):
        for name in list(tools)[:: -1 if round_ % 2 else 1]:  # forward, then backward: see the module docstring
            call = tools[name]
            if spent[name] > budget.seconds and best[name] < float("inf"):
                continue
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            spent[name] += elapsed
            best[name] = min(best[name], elapsed * 1e3)
    return best, results


class Hog:
    """One CPU-bound process beside the benchmark (a numpy matrix-product loop on one thread).

    Started paused on entry, killed on exit (also on Ctrl-C, and by the kernel if this process dies first);
    :meth:`running` resumes it for a block.
    """

    SCRIPT = (
        "import numpy as np\n"
        "a = np.random.default_rng(0).random((384, 384))\n"
        "while True:\n"
        "    a = a @ a\n"
        "    a /= np.abs(a).max()\n"
    )

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Hog:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT], env=env, preexec_fn=_die_with_parent)
        time.sleep(0.5)  # numpy's import: let it reach its loop before the first loaded timing
        self.pause()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL also ends a stopped process
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        assert self.process is not None and self.process.poll() is None, "the background process has ended"
        self.process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
        try:
            yield
        finally:
            self.pause()


def _die_with_parent() -> None:
    """In the child: ask Linux to kill it when the benchmark dies (PR_SET_PDEATHSIG), so no loop is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------- inputs


@dataclass
class Picture:
    """One scene in one colour layout, in each library's form."""

    name: str  # e.g. "screenshot grey", "astronaut BGR"
    cv: np.ndarray  # [H, W] grey or [H, W, 3] BGR, uint8
    ours: np.ndarray  # [H, W] grey or [1, 3, H, W] RGB, uint8
    grey: bool

    @property
    def size(self) -> str:
        H, W = self.cv.shape[:2]
        return f"{W}×{H}"


@dataclass
class Cut:
    """A template of a picture, in each library's form."""

    label: str
    cv: np.ndarray
    ours: np.ndarray
    height: int
    width: int


def pictures_of(scene: scenes.Scene) -> list[Picture]:
    found = [Picture(f"{scene.name} grey", scene.grey, scene.grey, True)]
    if scene.rgb is not None:
        found.append(Picture(f"{scene.name} colour", scenes.to_bgr(scene.rgb), scenes.to_planes(scene.rgb), False))
    return found


def cut(picture: Picture, template: scenes.Template) -> Cut:
    """The template's pixels from the picture (colour: the same window of every channel)."""
    if picture.grey:
        pixels = template.cut(picture.cv)
        return Cut(template.label, pixels, pixels, template.height, template.width)
    ys, xs = slice(template.top, template.top + template.height), slice(template.left, template.left + template.width)
    return Cut(
        template.label,
        np.ascontiguousarray(picture.cv[ys, xs]),
        np.ascontiguousarray(picture.ours[:, :, ys, xs]),
        template.height,
        template.width,
    )


# ----------------------------------------------------------------------------------------------------- peers


def cv2_scores(image: np.ndarray, template: np.ndarray, metric: str) -> np.ndarray:
    import cv2

    return cv2.matchTemplate(image, template, getattr(cv2, CV2_METHODS[metric]))


def cv2_find_all(image: np.ndarray, template: np.ndarray, threshold: float, k: int) -> np.ndarray:
    """The OpenCV recipe: every position scoring >= threshold, greedily kept best first unless within half the
    template's smaller side (Chebyshev) of a kept one, at most k. Returns [N, 2] top-left (row, column)."""
    import cv2

    scores = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
    where = np.argwhere(scores >= threshold)
    order = np.argsort(-scores[where[:, 0], where[:, 1]], kind="stable")
    spacing = min(template.shape[:2]) // 2
    kept: list[np.ndarray] = []
    for point in where[order]:
        if all(np.abs(point - other).max() >= spacing for other in kept):
            kept.append(point)
            if len(kept) == k:
                break
    return np.array(kept, dtype=np.float64).reshape(-1, 2)


def cv2_find_best(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """matchTemplate + minMaxLoc: the best top-left (row, column), [1, 2]."""
    import cv2

    _, _, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED))
    return np.array([[y, x]], dtype=np.float64)


def corrmatch_find(
    image: np.ndarray, template: np.ndarray, threshold: float | None, k: int, levels: int = 6
) -> np.ndarray:
    """corrmatch's coarse-to-fine zncc search, template compiled in the call (as a one-off search does), on
    THREADS threads, keeping k candidates per pyramid level (its beam) for top-k. ``levels``: its pyramid's
    depth (6 by default; with fewer its coarse search misses less). Returns [N, 2] top-left (row, column) of the
    matches scoring >= threshold."""
    import corrmatch

    config = corrmatch.MatchConfig(
        parallel=True, beam_width=max(8, k), nms_radius=max(1, min(template.shape) // 2), max_image_levels=levels
    )
    matcher = corrmatch.Template(template).compile_no_rotation(max_levels=levels).matcher(config)
    try:
        found = [matcher.match_image(image)] if k == 1 else matcher.match_topk(image, k)
    except RuntimeError as error:  # it raises when no candidate survives its refinement
        if "no candidates" not in str(error):
            raise
        found = []
    kept = [(m.y, m.x) for m in found if threshold is None or m.score >= threshold]
    return np.array(kept, dtype=np.float64).reshape(-1, 2)


def slidesim_find(image: np.ndarray, template: np.ndarray, threshold: float | None, k: int, subpixel: bool):
    return slidesim.match(image, template, threshold=threshold, k=k, subpixel=subpixel)


def top_left_of(found: slidesim.Matches, height: int, width: int) -> np.ndarray:
    """slidesim reports template centres; [N, 2] top-left (row, column) like the peers."""
    return np.stack([np.asarray(found.y) - (height - 1) / 2, np.asarray(found.x) - (width - 1) / 2], axis=1)


def same_instances(ours: np.ndarray, theirs: np.ndarray, tolerance: float = 1.0) -> tuple[int, int, int]:
    """(found by both within ``tolerance`` pixels, only by ours, only by theirs)."""
    if len(ours) == 0 or len(theirs) == 0:
        return 0, len(ours), len(theirs)
    close = np.abs(ours[:, None, :] - theirs[None, :, :]).max(-1) <= tolerance
    both = int(close.any(1).sum())
    return both, len(ours) - both, int((~close.any(0)).sum())


# ----------------------------------------------------------------------------------------------------- cases


@dataclass
class Row:
    """One line of the report: a slidesim call against its peer."""

    case: str
    what: str  # metric, or the match call
    ours_ms: float
    engine: str
    estimate_ms: float
    peer: str
    peer_ms: float
    note: str = ""
    keys: tuple[str, str] = ("", "")  # the tool names of the slidesim call and of the peer in the case's race
    loaded: dict[str, float] = field(default_factory=dict)  # ours and peer under load, ours on one thread idle

    @property
    def ratio(self) -> float:
        return self.peer_ms / self.ours_ms

    @property
    def estimate_ratio(self) -> float:
        return self.estimate_ms / self.ours_ms


def chosen_estimate(image: np.ndarray, template: np.ndarray, metric: str) -> tuple[str, float]:
    """The engine ``method="auto"`` picks for this call and its estimated time in ms (what slidesim.explain
    prints on its "chosen" line)."""
    plan = slidesim.plan(image, template, metric=metric)
    chosen = next(c for c in plan.candidates if c.engine == plan.engine)
    return plan.engine, chosen.seconds * 1e3


def agreement(ours: np.ndarray, theirs: np.ndarray, metric: str) -> str:
    """Largest difference from OpenCV's map: absolute for normalized scores, relative to the map's largest
    magnitude otherwise."""
    ours = np.asarray(ours, dtype=np.float64).reshape(theirs.shape)
    gap = float(np.abs(ours - theirs).max())
    if metric in NORMALIZED:
        return f"max |Δ| vs cv2 {gap:.1e}"
    return f"max |Δ| / max |cv2| {gap / max(float(np.abs(theirs).max()), 1e-300):.1e}"


@dataclass
class ScoreCase:
    """similarity for several metrics on one picture and one template, with the peers on the same inputs."""

    picture: Picture
    template: Cut
    metrics: tuple[str, ...]
    skimage: bool

    @property
    def name(self) -> str:
        return f"{self.picture.name} {self.picture.size}, {self.template.label}"

    def tools(self) -> dict[str, Callable[[], object]]:
        image, tpl = self.picture.ours, self.template.ours
        tools: dict[str, Callable[[], object]] = {}
        for metric in self.metrics:
            tools[f"slidesim {metric}"] = lambda m=metric: slidesim.similarity(image, tpl, metric=m)
        # OpenCV's methods for the metrics it has, or all six when sad or l1_similarity need the fastest of them
        needs_all = any(metric in NO_CV2 for metric in self.metrics)
        for metric in CV2_METHODS:
            if needs_all or metric in self.metrics:
                tools[f"cv2 {metric}"] = lambda m=metric: cv2_scores(self.picture.cv, self.template.cv, m)
        if self.skimage and "zncc" in self.metrics:
            from skimage.feature import match_template

            # [H, W] or [H, W, C] with [h, w] or [h, w, C]: the joint score over the channels, like the others
            tools["skimage zncc"] = lambda: match_template(self.picture.cv, self.template.cv)
        return tools

    def rows(self, times: dict[str, float], results: dict[str, object]) -> list[Row]:
        rows = []
        cv_times = {m: times[f"cv2 {m}"] for m in CV2_METHODS if f"cv2 {m}" in times}
        for metric in self.metrics:
            mine = f"slidesim {metric}"
            row = functools.partial(Row, self.name, metric, times[mine], *chosen_estimate(*self.inputs, metric))
            if metric in CV2_METHODS:
                note = agreement(results[mine], results[f"cv2 {metric}"], metric)
                rows.append(row("cv2", cv_times[metric], note, (mine, f"cv2 {metric}")))
                if f"skimage {metric}" in times:
                    rows.append(row("skimage", times[f"skimage {metric}"], "", (mine, f"skimage {metric}")))
            else:
                fastest = min(cv_times, key=cv_times.__getitem__)
                note = "no cv2 counterpart: context only"
                rows.append(row(f"fastest cv2 ({fastest})", cv_times[fastest], note, (mine, f"cv2 {fastest}")))
        return rows

    @property
    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.picture.ours, self.template.ours


@dataclass
class MatchCase:
    """match with a threshold (k=50) or the single best match (k=1), against the OpenCV recipe and corrmatch."""

    picture: Picture
    template: Cut
    k: int
    what: str  # what the template shows

    @property
    def threshold(self) -> float | None:
        return THRESHOLD if self.k > 1 else None

    @property
    def name(self) -> str:
        return f"{self.picture.name} {self.picture.size}, {self.template.label} {self.what}"

    def call_label(self, subpixel: bool) -> str:
        args = f"threshold={THRESHOLD}, k={self.k}" if self.k > 1 else "k=1"
        return f"match({args}{'' if subpixel else ', subpixel=False'})"

    def tools(self) -> dict[str, Callable[[], object]]:
        image, tpl, k, threshold = self.picture.ours, self.template.ours, self.k, self.threshold
        tools: dict[str, Callable[[], object]] = {
            "slidesim subpixel": lambda: slidesim_find(image, tpl, threshold, k, True),
            "slidesim": lambda: slidesim_find(image, tpl, threshold, k, False),
        }
        if k > 1:
            tools["cv2"] = lambda: cv2_find_all(self.picture.cv, self.template.cv, THRESHOLD, k)
        else:
            tools["cv2"] = lambda: cv2_find_best(self.picture.cv, self.template.cv)
        if self.picture.grey and _has_corrmatch():
            tools["corrmatch"] = lambda: corrmatch_find(self.picture.cv, self.template.cv, threshold, k)
            tools[CORRMATCH_SHALLOW] = lambda: corrmatch_find(self.picture.cv, self.template.cv, threshold, k, 2)
        return tools

    def tie(self, ours: np.ndarray, theirs: np.ndarray) -> str | None:
        """For k=1 answers at different places: say so when both places score the same (identical copies of the
        template, as a screenshot's buttons are), which makes either answer right."""
        if self.k != 1 or len(ours) != 1 or len(theirs) != 1:
            return None
        scores = cv2_scores(self.picture.cv, self.template.cv, "zncc")
        a, b = (float(scores[tuple(np.rint(p[0]).astype(int))]) for p in (ours, theirs))
        return f"a tie: both places score {a:.4f} in OpenCV's map" if abs(a - b) <= 1e-4 else None

    def rows(self, times: dict[str, float], results: dict[str, object]) -> list[Row]:
        engine, estimate = chosen_estimate(self.picture.ours, self.template.ours, "zncc")  # the scoring's only
        h, w = self.template.height, self.template.width
        peers = {name: results[name] for name in ("cv2", "corrmatch", CORRMATCH_SHALLOW) if name in results}
        rows = []
        for subpixel in (True, False):
            key = "slidesim subpixel" if subpixel else "slidesim"
            ours = top_left_of(results[key], h, w)
            for peer, theirs in peers.items():
                both, only_ours, only_theirs = same_instances(ours, theirs)
                same = "same instances" if only_ours == only_theirs == 0 else self.tie(ours, theirs) or "differ"
                note = f"found: slidesim {len(ours)}, {peer} {len(theirs)}, both {both} ({same})"
                rows.append(
                    Row(
                        self.name,
                        self.call_label(subpixel),
                        times[key],
                        engine,
                        estimate,
                        peer,
                        times[peer],
                        note,
                        (key, peer),
                    )
                )
        return rows


@functools.cache
def _has_corrmatch() -> bool:
    try:
        import corrmatch  # noqa: F401
    except ImportError:
        return False
    return True


ALL_METRICS = (*CV2_METHODS, *NO_CV2)


def cases(quick: bool) -> list[ScoreCase | MatchCase]:
    """The suite: every metric on a few typical templates of every picture, zncc on every template size, and the
    match calls. --quick keeps the same kinds of case on fewer templates."""
    every_metric_sizes = {"32²"} if quick else {"16²", "64²", "24×80"}
    all_scenes = scenes.scenes()
    found: list[ScoreCase | MatchCase] = []
    for seed, scene in enumerate(all_scenes):
        templates = scenes.cut_templates(scene.grey, seed=seed)
        for picture in pictures_of(scene):
            big = picture.cv.size > 1_000_000
            for template in templates:
                if template.label in every_metric_sizes:
                    metrics = ALL_METRICS
                elif quick and template.label not in {"8²", "128²", "24×80"}:
                    continue
                else:
                    metrics = ("zncc",)
                # scikit-image on the 3-channel 1080p screenshot takes seconds a call: left out of --quick
                skimage = not (quick and big and not picture.grey)
                found.append(ScoreCase(picture, cut(picture, template), metrics, skimage))
    by_name = {scene.name: pictures_of(scene) for scene in all_scenes}
    for key, pictures in (
        ("screenshot", by_name["screenshot"]),
        ("screenshot icon", by_name["screenshot"][:1]),
        ("document", by_name["document"]),
    ):
        what, template = scenes.MATCH_TEMPLATES[key]
        found.extend(MatchCase(picture, cut(picture, template), K, what) for picture in pictures)
    camera = by_name["camera"][0]
    camera_template = scenes.cut_templates(camera.cv, seed=1, sizes=((32, 32),))[0]
    found.append(MatchCase(camera, cut(camera, camera_template), 1, "(a random cut)"))
    what, template = scenes.MATCH_TEMPLATES["screenshot"]
    found.append(MatchCase(by_name["screenshot"][0], cut(by_name["screenshot"][0], template), 1, what))
    return found


# ----------------------------------------------------------------------------------------------------- running


def run(suite: list[ScoreCase | MatchCase], budget: Budget, hog: Hog | None) -> list[Row]:
    """Time every case (idle, then loaded when ``hog`` is given) and print its rows as they come."""
    rows: list[Row] = []
    for number, case in enumerate(suite, 1):
        tools = case.tools()
        times, results = race(tools, budget)
        loaded: dict[str, float] = {}
        single: dict[str, float] = {}
        if hog is not None:
            with hog.running():
                loaded, _ = race(tools, budget)
            # what the one core the load leaves is worth: slidesim idle on one thread
            mine = {key: _one_thread(tool) for key, tool in tools.items() if key.startswith("slidesim")}
            single, _ = race(mine, budget)
        for row in case.rows(times, results):
            if loaded:
                row.loaded = {"ours": loaded[row.keys[0]], "peer": loaded[row.keys[1]], "one": single[row.keys[0]]}
            rows.append(row)
        print(f"[{number}/{len(suite)}] {case.name}", file=sys.stderr, flush=True)
    return rows


def _one_thread(tool: Callable[[], object]) -> Callable[[], object]:
    """``tool`` run under slidesim.thread_limit(1)."""

    def limited() -> object:
        with slidesim.thread_limit(1):
            return tool()

    return limited


def warm_up() -> None:
    """Compile and load every engine once on a small uint8 problem, grey and colour, so no case pays for it."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (96, 128), dtype=np.uint8)
    colour = rng.integers(0, 256, (1, 3, 96, 128), dtype=np.uint8)
    grey[40:, :64] = 7  # flat windows: the exact rescoring's kernels compile too
    colour[..., 40:, :64] = 7
    for metric in ALL_METRICS:
        slidesim.similarity(grey, grey[10:26, 20:36].copy(), metric=metric)
        slidesim.similarity(colour, colour[:, :, 10:26, 20:36].copy(), metric=metric)
    slidesim.match(grey, grey[10:26, 20:36].copy(), threshold=THRESHOLD, k=K)


# ----------------------------------------------------------------------------------------------------- report


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def table(rows: list[Row], loaded: bool) -> list[str]:
    """The markdown table: one row per slidesim call and peer."""
    if loaded:
        head = (
            "| case | slidesim call | peer | slidesim idle → loaded ms (×) | slidesim idle on one thread ms "
            "(loaded / it) | peer idle → loaded ms (×) | peer / slidesim idle → loaded |"
        )
        lines = [head, "|---|---|---|---|---|---|---|"]
        for r in rows:
            mine, one, peer = r.loaded["ours"], r.loaded["one"], r.loaded["peer"]
            lines.append(
                f"| {r.case} | {r.what} | {r.peer} | {ms(r.ours_ms)} → {ms(mine)} ({mine / r.ours_ms:.2f}×) | "
                f"{ms(one)} ({mine / one:.2f}) | {ms(r.peer_ms)} → {ms(peer)} ({peer / r.peer_ms:.2f}×) | "
                f"{r.ratio:.2f} → {peer / mine:.2f} |"
            )
        return lines
    head = (
        "| case | slidesim call | slidesim ms (engine) | estimate ms | estimate / measured | peer | peer ms | "
        "peer / slidesim | note |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        off = "" if 1 / 1.5 <= r.estimate_ratio <= 1.5 else " ✗"
        lines.append(
            f"| {r.case} | {r.what} | {ms(r.ours_ms)} ({r.engine}) | {ms(r.estimate_ms)} | "
            f"{r.estimate_ratio:.2f}{off} | {r.peer} | {ms(r.peer_ms)} | {r.ratio:.2f} | {r.note} |"
        )
    return lines


def summary(rows: list[Row], loaded: bool) -> list[str]:
    """Median and worst ratio per peer, and how many estimates are within 1.5× of the measured time."""
    lines = []
    for peer in dict.fromkeys(r.peer.split(" (")[0] for r in rows):
        ratios = [(r.ratio, r) for r in rows if r.peer.split(" (")[0] == peer]
        worst_ratio, worst = min(ratios, key=lambda pair: pair[0])
        lines.append(
            f"- {peer} / slidesim: median {np.median([q for q, _ in ratios]):.2f}, worst {worst_ratio:.2f} "
            f"({worst.case}, {worst.what}) over {len(ratios)} rows"
            + (" (fastest OpenCV method, a different computation: context only)" if peer == "fastest cv2" else "")
        )
    if loaded:  # each call once, though it may stand in several rows
        ours = {(r.case, r.keys[0]): r.loaded["ours"] / r.ours_ms for r in rows}
        theirs = {(r.case, r.keys[1]): r.loaded["peer"] / r.peer_ms for r in rows}
        for who, slow in (("slidesim", list(ours.values())), ("peers", list(theirs.values()))):
            lines.append(
                f"- {who} loaded / idle: median {np.median(slow):.2f}×, worst {max(slow):.2f}× over {len(slow)} calls"
            )
        single = list({(r.case, r.keys[0]): r.loaded["ours"] / r.loaded["one"] for r in rows}.values())
        lines.append(
            f"- slidesim loaded / slidesim idle on one thread: median {np.median(single):.2f}×, worst "
            f"{max(single):.2f}× over {len(single)} calls (the load leaves one of the two cores; OpenCV's "
            "matchTemplate uses one thread here whatever cv2.setNumThreads says, so the load takes nothing from it)"
        )
        return lines
    calls = {(r.case, r.what): r for r in rows}.values()  # one per slidesim call
    scored = [r for r in calls if not r.what.startswith("match")]
    within = [r for r in scored if 1 / 1.5 <= r.estimate_ratio <= 1.5]
    if scored:
        lines.append(
            f"- planner estimate within 1.5× of the measured time: {len(within)} of {len(scored)} similarity calls "
            f"(estimate / measured from {min(r.estimate_ratio for r in scored):.2f} to "
            f"{max(r.estimate_ratio for r in scored):.2f}); the match rows' estimate is the scoring's only"
        )
    return lines


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    """CPU model, cores, versions, slidesim's commit and the date."""
    import cv2
    import skimage

    model = cpu_model()
    try:
        import corrmatch

        corrmatch_version = getattr(corrmatch, "__version__", "installed")
    except ImportError:
        corrmatch_version = "not installed"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    git = (commit.stdout.strip() or "unknown") + (" with local changes" if dirty.stdout.strip() else "")
    return (
        f"{model}, {os.cpu_count()} cores, {THREADS} threads for every tool; Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}, OpenCV {cv2.__version__}, scikit-image "
        f"{skimage.__version__}, corrmatch {corrmatch_version}, slidesim {slidesim.__version__} (git {git}); "
        f"{datetime.date.today().isoformat()}"
    )


DESCRIPTION = """\
`python benchmarks/real_images.py` (`--load`: the same cases beside one other CPU-bound process) times slidesim on
uint8 pictures that people match templates in, side by side with OpenCV, scikit-image and corrmatch in one process,
interleaved (every other round in reverse order, so no tool always follows the same one), best of {rounds} rounds or
more for quick cases (as many as take about {case_seconds:g} s, up to {max_rounds}): a rendered 1920×1080 desktop
screenshot (windows, text, repeated buttons and icons, flat areas), the skimage.data photographs camera, astronaut,
coffee, coins, brick and text, and a scanned-looking page (benchmarks/scenes.py), in grey and 3-channel colour, with
templates cut at fixed seeds (8² to 128², and 24×80). Scores: the six metrics of cv2.matchTemplate against it (zncc
also against skimage.feature.match_template); sad and l1_similarity against the fastest OpenCV method on the same
inputs, for context only. match: `threshold={threshold}, k={k}` against matchTemplate + np.argwhere + greedy
suppression within half the template's side, and against corrmatch's top-k search (grey; with its default 6-level
pyramid, and with 2 levels, which misses fewer matches); k=1 against minMaxLoc and corrmatch's best match; "found"
compares the instances (top-left corners within 1 pixel). Ratios above 1 mean slidesim is faster. "Estimate" is the
planner's time for the engine it picks (`slidesim.plan`, as `slidesim.explain` prints it); the target is within 1.5×
of the measured time (✗ marks the rows outside)."""


def section(rows: list[Row], loaded: bool, budget: Budget) -> str:
    start, end = LOADED_MARKERS if loaded else (START, END)
    parts = [
        start,
        "## Real images under load" if loaded else "## Real images",
        "",
        DESCRIPTION.format(
            rounds=budget.rounds, case_seconds=budget.case_seconds, max_rounds=MAX_ROUNDS, threshold=THRESHOLD, k=K
        ),
        "",
        f"Measured on {machine()}"
        + (", loaded: one numpy matrix-product loop on one thread beside it" if loaded else "")
        + ".",
        "",
        *summary(rows, loaded),
        "",
        *table(rows, loaded),
        end,
    ]
    return "\n".join(parts)


def write(report: Path, text: str, markers: tuple[str, str] = (START, END)) -> None:
    """Replace a section of ``report`` between its ``markers`` (the Real images section by default), or append
    it."""
    old = report.read_text() if report.exists() else ""
    start, end = markers
    if start in old and end in old:
        new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    report.write_text(new)


def section_script(description: str, run: Callable[[Budget], list], section: Callable[[list], str], markers) -> None:
    """The command line of a script that times its cases side by side and prints (``--write``: also writes) one
    section of BENCHMARKS.md between ``markers``: ``run`` times the cases, ``section`` renders their rows."""
    import cv2

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md")
    parser.add_argument("--rounds", type=int, default=5, help="least interleaved rounds per case")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    text = section(run(Budget(rounds=args.rounds, seconds=3.0, case_seconds=1.0)))
    print(text)
    if args.write:
        write(REPORT, text, markers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer templates and rounds (about 2 minutes)")
    parser.add_argument("--load", action="store_true", help="run every case idle and beside a CPU-bound process")
    parser.add_argument("--cases", metavar="REGEX", help="only the cases whose name matches")
    parser.add_argument(
        "--write",
        action="store_true",
        help="replace the Real images section of the report (with --load: the Real images under load section)",
    )
    parser.add_argument("--report", type=Path, default=REPORT, help="the file --write updates (BENCHMARKS.md)")
    args = parser.parse_args()
    import cv2

    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    budget = Budget(rounds=2, seconds=0.3) if args.quick else Budget(rounds=5, seconds=1.5, case_seconds=1.0)
    suite = cases(args.quick)
    if args.cases:
        suite = [case for case in suite if re.search(args.cases, case.name)]
    warm_up()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks (the hog's kill) on SIGTERM
    started = time.perf_counter()
    with Hog() if args.load else contextlib.nullcontext() as hog:
        rows = run(suite, budget, hog)
    text = section(rows, args.load, budget)
    print(text)
    print(f"{len(suite)} cases in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.write:
        write(args.report, text, LOADED_MARKERS if args.load else (START, END))
        print(f"updated {args.report}", file=sys.stderr)


if __name__ == "__main__":
    main()
