"""The one scoring driver (floor L3): a validated call's scores from an engine's reductions, a chunk of the bank
at a time.

A whole call is the collection of its chunks: :func:`score_channels` runs the bank as one chunk (per channel for
channels="separate" and "mean"), :func:`score_stream` in chunks whose image side (centring, window statistics,
spectra) is computed once. Temporaries of the finish stay bounded by finishing a few templates at a time. Engines
whose sums spread NaN get their holes filled before and marked after (:mod:`slidesim.scoring.holes`).

Example:
    >>> import torch
    >>> from slidesim._validate import canonicalize, padded_images, with_defaults
    >>> from slidesim.engines.direct import ENGINE
    >>> canon = canonicalize(torch.rand(1, 1, 16, 16), torch.rand(5, 1, 3, 3), **with_defaults({"metric": "sad"}))
    >>> image = padded_images(canon)
    >>> [(t0, t1, tuple(s.shape)) for t0, t1, s in score_stream(ENGINE.primitives(canon, image), canon, image, 2)]
    [(0, 2, (1, 2, 14, 14)), (2, 4, (1, 2, 14, 14)), (4, 5, (1, 1, 14, 14))]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from .._geometry import Border
from .._validate import Canonical, border, integer_valued
from ..metrics import MetricSpec, finish_distance
from .correlation import CorrelationScorer
from .holes import fill_holes, mark_holes, mark_infinite_means
from .primitives import Primitives
from .templates import mask_sums

_FINISH_TEMPORARIES = 8  # float64 output-sized temporaries alive at once while finishing a chunk
_MAX_FINISH_BYTES = 8 * 2**20

Chunks = Iterator[tuple[int, int, torch.Tensor]]


def _tap_by_tap(spec: MetricSpec, prims: Primitives) -> bool:
    """Whether the distance reductions score this metric tap by tap; otherwise the correlation scorer does (ssd
    through a correlation where the engine transforms: its tap-by-tap cost grows with the template)."""
    return spec.family == "distance" and not (spec.name == "ssd" and prims.squares_by_correlation)


def _integral(canon: Canonical, prims: Primitives) -> bool:
    """:func:`integer_valued` where the scores use it: the correlation scorer's window statistics and exact
    rounding, which ccorr has neither of (a float image costs a look at its pixels)."""
    if _tap_by_tap(canon.spec, prims) or canon.spec.name == "ccorr":
        return False
    return integer_valued(canon)


def score_channels(prims: Primitives, canon: Canonical, image: torch.Tensor) -> torch.Tensor:
    """Scores of a validated call on its padded images: [B, T, H', W'] ("joint", "mean") or [B, T, C, H', W']
    ("separate")."""
    T = canon.templates.shape[1]
    mask, periods, edge = canon.mask, canon.periods, border(canon)
    image, finite, holes = _filled(prims, canon, image, edge)
    if canon.channels_mode == "joint":
        scores = _BankScorer(
            prims, canon.spec, image, canon.templates, mask, periods, canon.memory_limit, finite, edge,
            integral=_integral(canon, prims),
        )  # fmt: skip
        return _marked(scores(0, T), holes, mask, prims, separate=False)
    per_channel = []
    for c in range(image.shape[1]):
        channel_mask = mask[:, :, c : c + 1] if mask is not None and mask.shape[2] > 1 else mask
        channel_periods = (periods[c],) if periods is not None else None
        scores = _BankScorer(
            prims, canon.spec, image[:, c : c + 1], canon.templates[:, :, c : c + 1], channel_mask,
            channel_periods, canon.memory_limit, finite, edge, integral=_integral(canon, prims),
        )  # fmt: skip
        per_channel.append(scores(0, T))
    separate = canon.channels_mode == "separate"
    scores = torch.stack(per_channel, dim=2) if separate else torch.stack(per_channel, dim=0).mean(dim=0)
    return _marked(scores, holes, mask, prims, separate)


def precision_work(prims: Primitives, canon: Canonical, image: torch.Tensor) -> tuple[bool, int]:
    """The data-dependent work of a call's exact numerics (see :meth:`CorrelationScorer.precision_work`) for the
    whole bank of a "joint" call on its padded images: (float64 cross terms from the start, windows left to the
    exact rescoring). Costs the window statistics (one pass over the images); other calls give (False, 0)."""
    if canon.channels_mode != "joint" or canon.spec.name not in ("ncc", "zncc"):
        return False, 0
    image, finite, _ = _filled(prims, canon, image, border(canon))
    T = canon.templates.shape[1]
    scorer = CorrelationScorer(
        prims, canon.spec, image, canon.templates, canon.mask, finite, border(canon), integral=_integral(canon, prims)
    )
    return scorer.precision_work(0, T)


class BankSource(Protocol):
    """A bank drawn on demand (a rotated and scaled bank, say), so that only one chunk of it exists at a time.

    Attributes:
        members: Templates in the bank.
    """

    members: int

    def draw(self, t0: int, t1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Templates t0:t1 -> (templates [Bk, t1 − t0, C, h, w], weights [Bm, t1 − t0 or 1, Cm, h, w] or None),
        canonical as :func:`slidesim._validate.canonicalize` makes them, in the call's compute dtype."""
        ...


def score_stream(
    prims: Primitives, canon: Canonical, image: torch.Tensor, chunk: int, source: BankSource | None = None
) -> Chunks:
    """Joint scores of the bank ``chunk`` templates at a time: yields (t0, t1, scores [B, t1 − t0, H', W']).

    The bank is the call's own, or, with ``source``, drawn from it a chunk at a time (templates of the call's
    size and channels; ``canon`` then only gives the images, options and geometry). The image side is computed
    once for the whole bank: its centring, the window statistics that templates share and, for engines that keep
    them, the spectra of the image planes. Memory beyond that is one chunk's templates, scores and temporaries,
    whatever the bank size.
    """
    if canon.channels_mode != "joint":
        raise ValueError(f"streaming scores one joint score per template; got channels={canon.channels_mode!r}")
    edge = border(canon)
    image, finite, holes = _filled(prims, canon, image, edge)
    prims = prims.for_stream()  # even for one chunk: masked zncc sums transform an image plane twice
    if source is None:
        T = canon.templates.shape[1]
        scores = _BankScorer(
            prims, canon.spec, image, canon.templates, canon.mask, canon.periods, canon.memory_limit, finite,
            edge, streaming=True, integral=_integral(canon, prims),
        )  # fmt: skip
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            yield t0, t1, _marked(scores(t0, t1), holes, _chunk_of(canon.mask, t0, t1), prims, separate=False)
        return
    scores = None
    for t0 in range(0, source.members, chunk):
        t1 = min(source.members, t0 + chunk)
        bank, mask = source.draw(t0, t1)
        if scores is None:  # the image side, once, with the first chunk's templates
            scores = _BankScorer(
                prims, canon.spec, image, bank, mask, canon.periods, canon.memory_limit, finite, edge,
                streaming=True, integral=_integral(canon, prims),
            )  # fmt: skip
        else:
            scores.load(bank, mask)
        yield t0, t1, _marked(scores(0, t1 - t0), holes, mask, prims, separate=False)


def _filled(
    prims: Primitives, canon: Canonical, image: torch.Tensor, edge: Border
) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
    """(the images to score, whether they are finite, the NaN map to mark afterwards or None): NaN pixels are
    filled for engines whose sums would spread them."""
    if prims.spreads_nan and not canon.problem.finite:
        holes, image = fill_holes(image, edge)
        return image, True, holes
    return image, canon.problem.finite, None


def _marked(
    scores: torch.Tensor, holes: torch.Tensor | None, mask: torch.Tensor | None, prims: Primitives, separate: bool
) -> torch.Tensor:
    """``scores`` with NaN in the windows that hold a filled hole (when there were holes)."""
    return scores if holes is None else mark_holes(scores, holes, mask, prims.geom, separate)


def _chunk_of(values: torch.Tensor | None, t0: int, t1: int) -> torch.Tensor | None:
    """Templates t0:t1 of a per-template tensor [B*, T, ...]; shared ones (None, or one entry) and whole banks as
    they are (a view costs microseconds that small calls notice)."""
    if values is None or values.shape[1] == 1 or (t0 == 0 and t1 == values.shape[1]):
        return values
    return values[:, t0:t1]


class _BankScorer:
    """One score over the channels of ``image`` (OpenCV's semantics) for any chunk t0:t1 of the bank.

    Args:
        prims: The engine's sliding reductions.
        spec: The metric.
        image: Padded images [B, C, Hp, Wp] (NaN holes already filled for engines that spread them), or 8- and
            16-bit integer images as stored, for engines that widen them as they read.
        bank: Templates [Bk, T, C, h, w].
        mask: Weights [Bm, Tm, Cm, h, w] or None.
        periods: Per-channel periods of circular channels, or None.
        memory_limit: Bytes that temporaries may use.
        finite: Whether every image pixel is finite.
        edge: Where the images lie in their padded planes.
        streaming: Keep derived image planes between chunks (a stream), where engines that cache work per image
            tensor (FFT spectra) recognize them.
        integral: Whether every image pixel is an integer of at most 16 bits
            (:func:`slidesim._validate.integer_valued`).
    """

    def __init__(
        self,
        prims: Primitives,
        spec: MetricSpec,
        image: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor | None,
        periods: tuple[float | None, ...] | None,
        memory_limit: int,
        finite: bool,
        edge: Border,
        streaming: bool = False,
        integral: bool = False,
    ) -> None:
        self.prims, self.spec, self.image = prims, spec, image
        self.dtype = image.dtype if image.is_floating_point() else bank.dtype  # narrow images: the compute dtype
        self.periods, self.memory_limit, self.finite = periods, memory_limit, finite
        self.tap_by_tap = _tap_by_tap(spec, prims)
        if self.tap_by_tap:
            self.load(bank, mask)
        else:
            self.bank, self.mask = bank, mask
            self.correlation = CorrelationScorer(
                prims, spec, image, bank, mask, finite, edge, keep_planes=streaming, integral=integral
            )

    def load(self, bank: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Score another chunk of a streamed bank from now on (arguments as at construction); the image side,
        statistics included, is kept."""
        self.bank, self.mask, spec = bank, mask, self.spec
        if not self.tap_by_tap:
            self.correlation.load(bank, mask)
            return
        C, h, w = bank.shape[-3:]
        self.weights = None if mask is None else (mask if spec.power == 1 else mask * mask)
        # Without a mask n is a count: a Python number spares small calls two tensor operations.
        if mask is None:
            self.n: float | torch.Tensor = float(C * h * w)
        else:
            self.n = mask_sums(mask, C, h, w, self.image).to(self.dtype)[..., None, None]

    def __call__(self, t0: int, t1: int) -> torch.Tensor:
        """Scores of templates t0:t1 -> [B, t1 − t0, H', W'] in the compute dtype."""
        spec = self.spec
        if self.tap_by_tap:
            weights = _chunk_of(self.weights, t0, t1)
            distance = self.prims.distance(self.image, _chunk_of(self.bank, t0, t1), weights, spec.power, self.periods)
            n = self.n if isinstance(self.n, float) else _chunk_of(self.n, t0, t1)
            return finish_distance(spec.name, distance, n, in_place=not distance.requires_grad)
        raw = self.correlation.raw(t0, t1)
        if spec.name == "ssd":
            return raw
        if spec.name == "ccoeff":
            if self.finite:
                return raw
            return mark_infinite_means(raw, self.image, _chunk_of(self.mask, t0, t1), self.prims.geom)
        if spec.name == "ccorr":
            return raw
        return self._finished(raw, t0)

    def _finished(self, raw: torch.Tensor, t0: int) -> torch.Tensor:
        """The finish of raw [B, t, H', W'] (templates t0..), a few templates at a time where it needs float64
        temporaries per template (autograd, ssd_normed): in place without autograd."""
        B, t, out_h, out_w = raw.shape
        per_template = _FINISH_TEMPORARIES * 8 * B * out_h * out_w
        step = int(max(1, min(t, min(self.memory_limit // 2, _MAX_FINISH_BYTES) // max(1, per_template))))
        finish = self.correlation.finish
        if raw.requires_grad:
            parts = [
                finish(raw[:, s : s + step], t0 + s, t0 + min(t, s + step), in_place=False) for s in range(0, t, step)
            ]
            return torch.cat(parts, dim=1)
        if self.spec.name != "ssd_normed":  # ncc and zncc finish in place without per-template temporaries
            step = t
        for s in range(0, t, step):
            finish(raw[:, s : s + step], t0 + s, t0 + min(t, s + step), in_place=True)
        return raw
