"""slidesim.dask against the in-memory results, on the threaded scheduler and on a real dask.distributed cluster."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import slidesim
from slidesim.errors import SlidesimTypeError, SlidesimValueError

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
sdask = pytest.importorskip("slidesim.dask")

CHUNKINGS = [(1, 3, 10, 7), (2, 1, 3, 2), (1, 3, 47, 53)]  # small, smaller than the template, one chunk


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((2, 3, 47, 53)).astype(np.float32), rng.random((4, 3, 5, 4)).astype(np.float32)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize(
    ("metric", "mode", "padding", "stride", "dilation", "channels"),
    [
        ("sad", "valid", "constant", 1, 1, "joint"),
        ("zncc", "same", "reflect", (2, 3), 1, "joint"),
        ("ssd_normed", "full", "constant", 1, (2, 1), "separate"),
        ("l1_similarity", "same", "circular", 3, 1, "mean"),
        ("ccoeff", "full", "replicate", (1, 2), (1, 2), "joint"),
    ],
)
def test_every_chunking_gives_the_in_memory_scores(chunks, metric, mode, padding, stride, dilation, channels) -> None:
    images, bank = _data()
    options = {
        "metric": metric,
        "mode": mode,
        "padding": padding,
        "stride": stride,
        "dilation": dilation,
        "channels": channels,
        "pad_value": 0.3,
    }
    want = slidesim.similarity(images, bank, **options)
    got = sdask.similarity(da.from_array(images, chunks=chunks), bank, **options)
    assert got.shape == want.shape
    _close(got.compute(), want)


def test_exhaustive_small_grid() -> None:
    """Every mode × padding × stride × dilation on chunks smaller than the template's span."""
    images, bank = _data(1)
    lazy = da.from_array(images, chunks=(1, 2, 4, 3))
    for mode, padding, stride, dilation in itertools.product(
        ["valid", "same", "full"], ["constant", "reflect"], [1, (2, 3)], [(3, 2)]
    ):
        options = {"metric": "mad", "mode": mode, "padding": padding, "stride": stride, "dilation": dilation}
        _close(sdask.similarity(lazy, bank, **options).compute(), slidesim.similarity(images, bank, **options))


def test_masks_per_image_banks_circular_and_integers() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 2, 30, 26), dtype=np.uint8)
    banks = rng.integers(0, 256, (3, 2, 2, 6, 5), dtype=np.uint8)
    mask = rng.random((3, 2, 1, 6, 5)) + 0.1
    lazy = da.from_array(images, chunks=(2, 1, 7, 9))
    for options in ({"metric": "sad", "circular": {0: 256.0}}, {"metric": "zncc", "mask": mask}):
        _close(sdask.similarity(lazy, banks, **options).compute(), slidesim.similarity(images, banks, **options))
    shared = slidesim.similarity(images, banks[0], metric="ssd", mask=mask[0, :, 0])
    _close(sdask.similarity(lazy, torch.from_numpy(banks[0]), metric="ssd", mask=mask[0, :, 0]).compute(), shared)


def test_two_dimensional_images_and_float64() -> None:
    image = np.random.default_rng(3).random((61, 40))
    template = image[10:19, 5:12].copy()
    got = sdask.similarity(da.from_array(image, chunks=(13, 11)), template, metric="zncc", mode="same")
    want = slidesim.similarity(image, template, metric="zncc", mode="same")
    assert got.dtype == np.float64
    _close(got.compute(), want)


def test_errors_come_before_any_computation() -> None:
    lazy = da.from_array(np.zeros((1, 1, 10, 10), np.float32), chunks=5)
    with pytest.raises(SlidesimValueError, match=r"`templates` spatial extent 12x3"):
        sdask.similarity(lazy, np.zeros((1, 1, 12, 3), np.float32))
    with pytest.raises(SlidesimValueError, match=r"`metric` must be one of"):
        sdask.similarity(lazy, np.zeros((1, 1, 3, 3), np.float32), metric="nope")
    with pytest.raises(SlidesimValueError, match=r"`mask` weights must be non-negative"):
        sdask.similarity(lazy, np.zeros((1, 1, 3, 3), np.float32), mask=-np.ones((3, 3)))
    with pytest.raises(SlidesimTypeError, match=r"`images` must be a dask array"):
        sdask.similarity([[1, 2]], np.zeros((1, 1), np.float32))
    sixteen = da.from_array(np.zeros((1, 1, 10, 10), np.uint16), chunks=5)  # the core sees float32 chunks
    for call in (sdask.similarity, sdask.match):
        with pytest.raises(SlidesimTypeError, match=r"same bit depth; got images of dtype uint16 .* dtype uint8"):
            call(sixteen, np.zeros((1, 1, 3, 3), np.uint8))


def test_a_failing_chunk_fails_the_whole_computation() -> None:
    def broken(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"][2] == 1:
            raise OSError("chunk 1 could not be read")
        return block

    zeros = da.from_array(np.zeros((1, 1, 20, 20), np.float32), chunks=(1, 1, 10, 10))
    lazy = zeros.map_blocks(broken, dtype=np.float32)
    with pytest.raises(OSError, match="chunk 1 could not be read"):
        sdask.similarity(lazy, np.ones((1, 1, 3, 3), np.float32), metric="sad").compute()


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="1GiB"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_distributed_cluster_gives_the_in_memory_scores(cluster_client) -> None:
    images, bank = _data(4)
    lazy = da.from_array(images, chunks=(1, 3, 16, 20))
    for metric in ("sad", "zncc"):
        got = cluster_client.compute(sdask.similarity(lazy, bank, metric=metric, mode="same")).result()
        _close(got, slidesim.similarity(images, bank, metric=metric, mode="same"))
    assert len(cluster_client.scheduler_info()["workers"]) == 2


def _same_matches(got, want) -> None:
    assert len(got) == len(want)
    for field in ("batch", "template", "y", "x", "score", "angle", "scale", "top", "left", "height", "width"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-6, atol=1e-6, err_msg=field)


@pytest.fixture(scope="module")
def photographs() -> tuple[np.ndarray, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    camera = data.camera()[::2, ::2].astype(np.float32) / 255  # 256²
    images = np.stack([camera[None], camera[None, ::-1].copy()])  # [2, 1, 256, 256]
    bank = np.stack([camera[50:66, 100:115], camera[150:166, 25:40]])[:, None]  # [2, 1, 16, 15]
    return images, bank


@pytest.mark.parametrize("chunks", [(1, 1, 50, 65), (2, 1, 19, 256)])
@pytest.mark.parametrize(
    "options",
    [
        {"k": 3},
        {"k": 5, "min_distance": 4, "metric": "sad", "subpixel": False},
        {"k": 2, "rotations": [0, 90, 180], "threshold": 0.2},
        {"k": 4, "mode": "same", "stride": 2},
        {"k": 3, "exclude_border": 20, "scales": [0.9, 1.0]},
    ],
)
def test_match_equals_the_in_memory_match(photographs, chunks, options) -> None:
    images, bank = photographs
    want = slidesim.match(images, bank, **options)
    got = sdask.match(da.from_array(images, chunks=chunks), bank, **options)
    _same_matches(got, want)
    assert got.maps.shape == want.maps.shape
    # float32 round-off: each chunk centres its windows on its own mean; masked zncc of near-flat windows stays
    # within the numerics contract's 5e-4 of float64 either way
    np.testing.assert_allclose(got.maps.compute(), want.maps, rtol=0, atol=5e-4)


def test_match_on_plateaus_gathers_every_tie() -> None:
    """A flat image: every position ties, so chunks must send more candidates until none held back could
    matter; the order then follows positions, as in memory."""
    image = np.zeros((40, 44), np.float32)
    template = np.zeros((5, 5), np.float32)
    for k in (1, 7):
        want = slidesim.match(image, template, metric="sad", k=k, min_distance=3, subpixel=False)
        got = sdask.match(
            da.from_array(image, chunks=(9, 11)), template, metric="sad", k=k, min_distance=3, subpixel=False
        )
        _same_matches(got, want)


def test_min_distance_beyond_the_maps_keeps_the_best_match_alone() -> None:
    """A min_distance wider than the maps: the neighbourhood halo is capped at the maps' sides (dask refused a
    halo deeper than the array with its own ValueError)."""
    rng = np.random.default_rng(9)
    image = rng.random((1, 1, 70, 45)).astype(np.float32)
    template = image[0, :, 20:27, 10:16].copy()[None]
    for min_distance in (200, 10**9):
        options = {"k": 3, "min_distance": min_distance, "subpixel": False}
        want = slidesim.match(image, template, **options)
        _same_matches(sdask.match(da.from_array(image, chunks=(1, 1, 17, 20)), template, **options), want)
        assert len(want.y) == 1


def test_candidates_gathered_from_the_chunks_fit_memory_limit(monkeypatch) -> None:
    """Every chunk sends at most as many candidates per map as memory_limit holds once merged (not k + 16 each),
    and the matches stay those of memory; where more would be needed to be exact (a flat map: every position
    ties), the call is refused with the bytes, naming memory_limit and k."""
    rng = np.random.default_rng(10)
    image = rng.random((1, 1, 64, 60)).astype(np.float32)
    template = image[0, :, 20:25, 10:14].copy()[None]
    options = {"k": 2000, "min_distance": 1, "metric": "sad", "subpixel": False}
    sent = []
    candidates = sdask._candidates
    monkeypatch.setattr(
        sdask, "_candidates", lambda *maps, **kw: (sent.append(kw["limit"]), candidates(*maps, **kw))[1]
    )
    limit = 2**19
    with dask.config.set(scheduler="synchronous"):  # the recording runs here, even with a cluster's client about
        got = sdask.match(da.from_array(image, chunks=(1, 1, 10, 10)), template, memory_limit=limit, **options)
    _same_matches(got, slidesim.match(image, template, **options))
    assert max(sent) < 100  # fewer than a chunk's 10 × 10 positions: the merge of 36 chunks fits 512 KiB
    flat = da.from_array(np.zeros((1, 1, 64, 60), np.float32), chunks=(1, 1, 10, 10))
    with pytest.raises(
        SlidesimValueError, match=r"^`memory_limit` of 524,288 bytes cannot hold the peak candidates that k=2,000"
    ):
        sdask.match(flat, np.zeros((1, 1, 5, 4), np.float32), memory_limit=limit, **options)


def test_refinement_that_cannot_fit_memory_limit_is_refused_before_computing() -> None:
    images = da.from_array(np.random.default_rng(11).random((1, 1, 120, 120)).astype(np.float32), chunks=60)
    template = np.ones((1, 1, 40, 40), np.float32)
    with pytest.raises(
        SlidesimValueError, match="`memory_limit` of 524,288 bytes cannot hold the sub-pixel refinement"
    ):
        sdask.match(images, template, memory_limit=2**19)
    with pytest.raises(SlidesimValueError, match="cannot hold the sub-pixel refinement of one match of a 40×40"):
        slidesim.match(images.compute(), template, memory_limit=2**19)


def test_match_per_image_banks_and_masks() -> None:
    rng = np.random.default_rng(8)
    images = rng.random((3, 2, 48, 40)).astype(np.float32)
    banks = np.stack([images[b, :, 10 + b : 19 + b, 5 : 12 + b % 2][:, :9, :7] for b in range(3)])[:, None]
    mask = rng.random((9, 7)) > 0.2
    options = {"k": 2, "mask": mask, "metric": "zncc"}
    _same_matches(
        sdask.match(da.from_array(images, chunks=(2, 1, 13, 17)), banks, **options),
        slidesim.match(images, banks, **options),
    )


def test_distributed_match(cluster_client, photographs) -> None:
    images, bank = photographs
    lazy = da.from_array(images, chunks=(1, 1, 64, 64))
    with cluster_client.as_current():
        got = sdask.match(lazy, bank, k=2, rotations=[0, 180])
    _same_matches(got, slidesim.match(images, bank, k=2, rotations=[0, 180]))


def _progress_case():
    image = np.random.default_rng(9).random((1, 1, 90, 80)).astype(np.float32)
    return da.from_array(image, chunks=32), image[:, :, 30:39, 20:27], image


def test_progress_bar_on_stderr(capsys) -> None:
    lazy, template, image = _progress_case()
    with dask.config.set(scheduler="threads"):  # dask's local scheduler even if another test left a default client
        found = sdask.match(lazy, template, k=1, progress=True)
    captured = capsys.readouterr()
    assert "Completed" in captured.err and captured.out == ""
    _same_matches(found, slidesim.match(image, template, k=1))


def test_progress_bar_on_a_cluster_goes_to_stderr(cluster_client, capsys) -> None:
    lazy, template, image = _progress_case()
    found = sdask.match(lazy, template, k=1, progress=True)
    captured = capsys.readouterr()
    assert "Completed" in captured.err and captured.out == ""
    _same_matches(found, slidesim.match(image, template, k=1))


def test_channels_last_gives_the_in_memory_channels_last_results() -> None:
    images, bank = _data(9)
    last, bank_last = (
        np.ascontiguousarray(images.transpose(0, 2, 3, 1)),
        np.ascontiguousarray(bank.transpose(0, 2, 3, 1)),
    )
    mask = np.random.default_rng(10).random((5, 4, 3)).astype(np.float32) + 0.1  # [h, w, C]
    lazy_images = da.from_array(last, chunks=(1, 13, 17, 3))
    for options in ({"metric": "zncc"}, {"metric": "sad", "channels": "separate", "mask": mask, "mode": "same"}):
        got = sdask.similarity(lazy_images, bank_last, channels_last=True, **options)
        want = slidesim.similarity(last, bank_last, channels_last=True, **options)
        _close(got.compute(), want)
    one = sdask.similarity(lazy_images[0], bank_last[0], channels="separate", channels_last=True)
    _close(one.compute(), slidesim.similarity(last[0], bank_last[0], channels="separate", channels_last=True))
    assert one.shape == (43, 50, 3)
    _same_matches(
        sdask.match(lazy_images, bank_last, k=2, mask=mask, channels_last=True),
        slidesim.match(images, bank, k=2, mask=np.ascontiguousarray(mask.transpose(2, 0, 1))),
    )
    with pytest.raises(SlidesimTypeError, match=r"`channels_last` must be True or False; got 'yes'"):
        sdask.similarity(lazy_images, bank_last, channels_last="yes")
    with pytest.raises(SlidesimTypeError, match=r"`channels_last` must be True or False; got 1"):
        sdask.match(lazy_images, bank_last, channels_last=1)
    with pytest.raises(SlidesimValueError, match=r"as many channels \(the last axis.*got shape \(4, 5, 4, 2\)"):
        sdask.similarity(lazy_images, bank_last[..., :2], channels_last=True)
