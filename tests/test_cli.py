"""The command line, through main(argv) and through a real subprocess."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import slidesim
from slidesim import cli, draw

from .conftest import cut_out

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("matplotlib")


@pytest.fixture
def files(tmp_path):
    """A textured grey image (PNG), two templates cut from it, a turned template and a mask."""
    rng = np.random.default_rng(0)
    coarse = rng.random((12, 16))
    image = np.kron(coarse, np.ones((10, 10))) + 0.2 * rng.random((120, 160))
    image = (255 * image / image.max()).astype(np.uint8)
    paths = {"image": tmp_path / "image.png", "a": tmp_path / "a.png", "b": tmp_path / "b.png"}
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(image[20:41, 30:47]).save(paths["a"])
    Image.fromarray(image[70:91, 100:117]).save(paths["b"])
    paths["turned"] = tmp_path / "turned.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(image[40:61, 60:81]))).save(paths["turned"])
    mask = np.full((21, 17), 255, np.uint8)
    mask[:5] = 0
    paths["mask"] = tmp_path / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    paths["array"] = image
    return paths


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        picture.verify()
    with Image.open(path) as picture:
        return picture.size


def test_match_prints_a_table_json_and_csv(files, capsys) -> None:
    code, out, _ = _run(["match", files["image"], files["a"], files["b"]], capsys)
    assert code == 0
    assert "a.png" in out and "b.png" in out
    code, out, _ = _run(["match", files["image"], files["a"], files["b"], "--json"], capsys)
    rows = json.loads(out)
    assert [r["template"] for r in rows] == ["a.png", "b.png"] and [r["template_index"] for r in rows] == [0, 1]
    assert (round(rows[0]["y"], 2), round(rows[0]["x"], 2)) == (30.0, 38.0)
    assert (round(rows[1]["y"], 2), round(rows[1]["x"], 2)) == (80.0, 108.0)
    assert list(rows[0]) == list(cli.COLUMNS)
    code, out, _ = _run(["match", files["image"], files["a"], "--csv", "--top", "2", "--metric", "sad"], capsys)
    lines = out.strip().splitlines()
    assert lines[0] == ",".join(cli.COLUMNS)
    assert len(lines) == 3
    assert abs(float(lines[1].split(",")[4]) - 30) < 0.01 and abs(float(lines[1].split(",")[5]) - 38) < 0.01


def _subprocess_match(*argv) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "slidesim", "match", *(str(a) for a in argv), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_output_format_has_the_same_columns_and_full_file_names(files, tmp_path) -> None:
    """Table, JSON and CSV through a real process: image and template by file name (never cut), the page and the
    template's position, the centre, the box's top-left corner and size; the table says what the positions are."""
    image = tmp_path / "a screenshot with a long file name.png"
    template = tmp_path / "the button we are looking for today.png"
    image.write_bytes(files["image"].read_bytes())
    template.write_bytes(files["a"].read_bytes())  # 21 × 17, cut at (20, 30)
    argv = [image, template, files["b"]]
    table = _subprocess_match(*argv).splitlines()
    assert (
        "y, x = centre" in table[0] and "top, left = top-left corner" in table[0] and "pixels of the image" in table[0]
    )
    assert table[1].split() == [
        "image", "page", "template", "template_index", "y", "x", "top", "left", "height", "width", "score", "angle",
        "scale",
    ]  # fmt: skip
    assert table[2].startswith(f"{image.name} ") and f" {template.name} " in table[2]
    assert table[2].split()[-9:-3] == ["30.00", "38.00", "20.00", "30.00", "21.00", "17.00"]
    rows = json.loads(_subprocess_match(*argv, "--json"))
    assert [list(row) for row in rows] == [table[1].split()] * 2
    assert [(r["image"], r["page"], r["template"], r["template_index"]) for r in rows] == [
        (image.name, 0, template.name, 0),
        (image.name, 0, "b.png", 1),
    ]
    assert [round(rows[1][name], 2) for name in ("y", "x", "top", "left", "height", "width")] == [
        80.0, 108.0, 70.0, 100.0, 21.0, 17.0
    ]  # fmt: skip
    lines = _subprocess_match(*argv, "--csv").splitlines()
    assert lines[0].split(",") == table[1].split()
    parsed = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert [(r["image"], r["template"], r["template_index"]) for r in parsed] == [
        (image.name, template.name, "0"),
        (image.name, "b.png", "1"),
    ]
    assert [float(parsed[0][name]) for name in ("top", "left", "height", "width")] == pytest.approx(
        [20, 30, 21, 17], abs=0.01
    )


def test_a_turned_match_gives_the_bounding_box_of_the_turned_template(files, tmp_path) -> None:
    turned = tmp_path / "turned_tall.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(files["array"][40:61, 60:75]))).save(turned)  # 21 × 15 turned
    row = json.loads(_subprocess_match(files["image"], turned, "--rotations", "0:360:90", "--json"))[0]
    assert row["angle"] == 270.0 and row["template"] == "turned_tall.png"
    assert [round(row[name], 2) for name in ("y", "x", "top", "left", "height", "width")] == [
        50.0, 67.0, 40.0, 60.0, 21.0, 15.0
    ]  # fmt: skip


def test_the_help_says_what_the_columns_are() -> None:
    text = cli.build_parser()._subparsers._group_actions[0].choices["match"].format_help()
    flat = " ".join(text.split())
    assert "y, x = centre of the match" in flat and "top, left = top-left corner of its box" in flat
    assert "image, page, template, template_index, y, x, top, left, height, width, score, angle, scale" in flat


def test_rotations_and_pictures(files, capsys, tmp_path) -> None:
    heatmap, overlay = tmp_path / "heat.png", tmp_path / "over.png"
    argv = ["match", files["image"], files["turned"], "--rotations", "0:360:90", "--json"]
    code, out, _ = _run([*argv, "--heatmap", heatmap, "--overlay", overlay], capsys)
    assert code == 0
    row = json.loads(out)[0]
    assert row["angle"] == 270.0
    assert (round(row["y"], 2), round(row["x"], 2)) == (50.0, 70.0)
    width, height = _png_size(overlay)
    assert width * 120 == height * 160  # the image's aspect: 160 × 120
    assert _png_size(heatmap)[0] > 100


def test_mask_explain_and_stride(files, capsys) -> None:
    code, out, _ = _run(["match", files["image"], files["a"], "--mask", files["mask"], "--json"], capsys)
    assert code == 0 and round(json.loads(out)[0]["y"], 2) == 30.0
    code, out, _ = _run(["explain", files["image"], files["a"], "--metric", "sad", "--stride", "2"], capsys)
    assert code == 0 and "slidesim plan" in out and "stride (2, 2)" in out


def test_sixteen_bit_and_multi_page_tiff(files, capsys, tmp_path) -> None:
    image16 = files["array"].astype(np.uint16) * 257
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([image16, np.roll(image16, (5, 7), axis=(0, 1))]))
    template = tmp_path / "template.tif"
    tifffile.imwrite(template, image16[20:41, 30:47])
    code, out, _ = _run(["match", stack, template, "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["page"] for r in rows] == [0, 1] and {r["image"] for r in rows} == {"stack.tif"}
    assert [(round(r["y"], 2), round(r["x"], 2)) for r in rows] == [(30.0, 38.0), (35.0, 45.0)]


def test_a_templates_alpha_is_its_mask_unless_ignored(capsys, tmp_path) -> None:
    scene, rgba, (y, x) = cut_out()
    paths = {name: tmp_path / f"{name}.png" for name in ("scene", "cut", "colours", "mask")}
    Image.fromarray(scene).save(paths["scene"])
    Image.fromarray(rgba, mode="RGBA").save(paths["cut"])
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(paths["colours"])
    mask = np.full((31, 31), 255, np.uint8)
    mask[:, :4] = 0
    Image.fromarray(mask).save(paths["mask"])
    for extra in ([], ["--metric", "sad"], ["--mask", paths["mask"]], ["--rotations", "0,90"]):
        code, out, err = _run(["match", paths["scene"], paths["cut"], "--json", *extra], capsys)
        assert code == 0, err
        row = json.loads(out)[0]
        assert abs(row["y"] - y) < 0.1 and abs(row["x"] - x) < 0.1, extra
    # --ignore-alpha matches the colours the transparent pixels hold: the place the disc was cut from
    code, out, _ = _run(["match", paths["scene"], paths["cut"], "--json", "--ignore-alpha"], capsys)
    ignored = json.loads(out)
    assert abs(ignored[0]["y"] - y) > 10
    colours = json.loads(_run(["match", paths["scene"], paths["colours"], "--json"], capsys)[1])
    assert [{**row, "template": "colours.png"} for row in ignored] == colours  # the same but for the file name
    # a template with alpha and one without, of one size, in one call: each keeps its own mask
    code, out, _ = _run(["match", paths["scene"], paths["cut"], paths["colours"], "--json"], capsys)
    rows = json.loads(out)
    assert abs(rows[0]["y"] - y) < 0.1 and (rows[1]["y"], rows[1]["x"]) == (ignored[0]["y"], ignored[0]["x"])
    assert "mask shared" in _run(["explain", paths["scene"], paths["cut"]], capsys)[1]
    assert "mask none" in _run(["explain", paths["scene"], paths["cut"], "--ignore-alpha"], capsys)[1]


def test_a_sixteen_bit_image_with_an_eight_bit_template(capsys, tmp_path) -> None:
    rng = np.random.default_rng(2)
    eight = np.round(255 * np.kron(rng.random((6, 8)), np.ones((10, 10)))).astype(np.uint8)
    noise = rng.integers(0, 200, eight.shape)  # the low bits of a 16-bit camera
    sixteen = np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "camera16.tif", sixteen)
    Image.fromarray(eight[25:40, 33:51]).save(tmp_path / "part.png")
    lazy = ["--chunk", "32"] if importlib.util.find_spec("dask") else []  # the lazy reader too
    for extra in ([], lazy):
        code, out, err = _run(
            ["match", tmp_path / "camera16.tif", tmp_path / "part.png", "--metric", "sad", "--json", *extra], capsys
        )
        assert code == 0, err
        row = json.loads(out)[0]
        assert (round(row["y"], 2), round(row["x"], 2)) == (32.0, 41.5), extra
        assert row["score"] < 15 * 18 * 200 / 65535  # the 16-bit noise: under 200 / 65535 a pixel


def test_demo_writes_pictures(tmp_path, capsys) -> None:
    code, out, _ = _run(["demo", "--out", tmp_path / "demo"], capsys)
    assert code == 0
    assert out.count("template ") >= 4
    triples = [re.findall(r"\((-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\)", row) for row in out.splitlines()]
    found = [t for t in triples if len(t) == 2]
    assert len(found) == 4
    for (ty, tx, ta), (fy, fx, fa) in found:
        assert abs(float(ty) - float(fy)) <= 1 and abs(float(tx) - float(fx)) <= 1 and ta == fa
    width, height = _png_size(tmp_path / "demo" / "overlay.png")
    assert width * 240 == height * 320
    _png_size(tmp_path / "demo" / "heatmap.png")


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["match", "{missing}", "{a}"], "does not exist"),
        (["match", "{corrupt}", "{a}"], "cannot read"),
        (["match", "{a}", "{image}"], "template"),
        (["match", "{image}", "{a}", "--metric", "nope"], "metric"),
        (["match", "{image}", "{a}", "--rotations", "0:360:5:1"], "--rotations"),
        (["match", "{image}", "{a}", "--rotations", "360:0"], "--rotations"),
        (["match", "{image}", "{a}", "--scales", "0:1.2"], "--scales"),
        (["match", "{image}", "{a}", "--scales", "1.2:0.8:0.1"], "--scales"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(files, tmp_path, capsys, argv, text) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("not an image")
    names = {"missing": tmp_path / "missing.png", "corrupt": corrupt, "a": files["a"], "image": files["image"]}
    code, _, err = _run([a.format(**names) for a in argv], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and text in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "text"), [(["match", "{image}", "{a}", "--top", "zero"], "--top"), (["match"], "required")]
)
def test_bad_arguments_are_one_line_and_exit_code_2(files, capsys, argv, text) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([a.format(a=files["a"], image=files["image"]) for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and text in err


def test_subprocess_exit_codes(files, tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "slidesim", "match", str(files["image"]), str(files["a"]), "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert round(json.loads(done.stdout)[0]["x"], 2) == 38.0
    done = subprocess.run(
        [sys.executable, "-m", "slidesim", "match", str(tmp_path / "nope.png"), str(files["a"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("slidesim: error:") and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "inclusive", "values"),
    [
        ("0:360:90", False, [0.0, 90.0, 180.0, 270.0]),
        ("0.8:1.25:0.05", True, [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25]),
        ("10,20", False, [10.0, 20.0]),
        ("45", False, [45.0]),
    ],
)
def test_parse_range(text, inclusive, values) -> None:
    assert cli.parse_range(text, "rotations", inclusive) == pytest.approx(values)


def test_progress_bar_only_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert cli._progress(quiet=False) is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli._progress(quiet=True) is None
    update = cli._progress(quiet=False)
    assert update is not None
    update(3, 6)
    update(6, 6)


def test_progress_bars_for_the_bank_then_the_refinement(monkeypatch) -> None:
    """match reports its phases each from 0: the templates of the bank, then the matches refined; each gets a bar."""
    pytest.importorskip("tqdm")
    bars = []

    class Bar:
        def __init__(self, total, desc, **_) -> None:
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, step) -> None:
            self.n += step

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr("tqdm.tqdm", Bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    update = cli._progress(quiet=False)
    for done, total in [(2, 4), (4, 4), (0, 3), (1, 3), (3, 3)]:
        update(done, total)
    assert [(bar.desc, bar.total, bar.n, bar.closed) for bar in bars] == [
        ("templates", 4, 4, True),
        ("refining matches", 3, 3, True),
    ]


def test_templates_of_different_sizes(files, capsys, tmp_path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(files["array"][60:71, 20:35]).save(small)
    heatmap = tmp_path / "heat.png"
    code, out, _ = _run(
        ["match", files["image"], files["a"], small, files["b"], "--json", "--heatmap", heatmap], capsys
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["template_index"] for r in rows] == [0, 1, 2]
    assert [r["template"] for r in rows] == ["a.png", "small.png", "b.png"]
    assert [(round(r["y"], 2), round(r["x"], 2)) for r in rows] == [(30.0, 38.0), (65.0, 27.0), (80.0, 108.0)]
    _png_size(heatmap)
    code, out, _ = _run(["explain", files["image"], files["a"], small], capsys)
    assert code == 0 and out.count("slidesim plan") == 2


def test_zarr_and_lazy_tiff_give_the_in_memory_matches(files, capsys, tmp_path) -> None:
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    argv = [files["a"], files["b"], "--json", "--top", "2", "--rotations", "0,90"]
    code, out, _ = _run(["match", files["image"], *argv], capsys)
    assert code == 0
    want = json.loads(out)
    store = tmp_path / "image.zarr"
    da.from_array(files["array"], chunks=(50, 60)).to_zarr(str(store))
    tiff = tmp_path / "tiled.tif"
    tifffile.imwrite(tiff, files["array"], tile=(32, 32))
    for source, extra in ((store, []), (tiff, ["--chunk", "48"])):
        code, out, err = _run(["match", source, *argv, *extra], capsys)
        assert code == 0, err
        got = json.loads(out)
        assert [(r["page"], r["template_index"], r["angle"]) for r in got] == [
            (r["page"], r["template_index"], r["angle"]) for r in want
        ]
        # sub-pixel positions are vertices of fits to float32 scores: the crop's memory layout (the whole image
        # or a lazy piece) may change the products' round-off, which moves a vertex by about 1e-5 px
        np.testing.assert_allclose([[r["y"], r["x"]] for r in got], [[r["y"], r["x"]] for r in want], atol=1e-4)
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-6)
    code, out, _ = _run(["explain", store, files["a"]], capsys)
    assert code == 0 and "each chunk is one call" in out and "(1, 1, 50, 60)" in out
    code, _, err = _run(["match", store, files["a"], "--heatmap", tmp_path / "h.png"], capsys)
    assert code == 2 and "opened lazily" in err


def test_local_cluster_workers_and_a_running_scheduler(files, capsys, tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    code, out, _ = _run(["match", files["image"], files["a"], "--json"], capsys)
    want = json.loads(out)
    code, out, err = _run(["match", files["image"], files["a"], "--json", "--workers", "2", "--quiet"], capsys)
    assert code == 0, err
    got = json.loads(out)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        code, out, err = _run(
            ["match", files["image"], files["a"], "--json", "--scheduler", cluster.scheduler_address], capsys
        )
    assert code == 0, err
    assert json.loads(out) == got
    np.testing.assert_allclose(
        [[r["y"], r["x"], r["score"]] for r in got], [[r["y"], r["x"], r["score"]] for r in want], atol=1e-6
    )


# ------------------------------------------------------------------------------------ options, errors and help
def _cli(*argv, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m slidesim ...`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "slidesim", *map(str, argv)], capture_output=True, text=True, timeout=timeout
    )


def test_mode_same_takes_a_template_larger_than_the_image(files) -> None:
    done = _cli("match", files["a"], files["image"], "--json", "--quiet")
    assert done.returncode == 2 and "--mode same or --mode full" in done.stderr and "mode='" not in done.stderr
    done = _cli("match", files["a"], files["image"], "--json", "--mode", "same", "--no-subpixel")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 1
    done = _cli("explain", files["image"], files["a"], "--mode", "full")
    assert done.returncode == 0 and "(full," in done.stdout


def test_no_subpixel_gives_whole_pixel_positions(files, tmp_path) -> None:
    shifted = tmp_path / "shifted.png"  # the template resampled half a pixel to the right: a sub-pixel optimum
    part = files["array"][20:41, 30:48].astype(np.float64)
    Image.fromarray(np.round((part[:, :-1] + part[:, 1:]) / 2).astype(np.uint8)).save(shifted)
    refined = json.loads(_cli("match", files["image"], shifted, "--json").stdout)[0]
    whole = _cli("match", files["image"], shifted, "--json", "--no-subpixel")
    assert whole.returncode == 0, whole.stderr
    row = json.loads(whole.stdout)[0]
    assert row["y"] == int(row["y"]) and row["x"] == int(row["x"])
    assert refined["x"] != int(refined["x"])


def test_all_gives_every_match_above_the_threshold(files) -> None:
    done = _cli("match", files["image"], files["a"], "--all", "--threshold", "0.75", "--json", "--no-subpixel")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert all(r["score"] >= 0.75 for r in rows)
    peaks = slidesim.find_peaks(
        slidesim.similarity(files["array"].astype(np.float32), files["array"][20:41, 30:47].astype(np.float32)),
        k=10**6, threshold=0.75, metric="zncc", min_distance=8, subpixel=False,
    )  # fmt: skip
    assert len(rows) == len(peaks.score) > 5
    done = _cli("match", files["image"], files["a"], "--all")
    assert done.returncode == 2 and "--all needs --threshold" in done.stderr
    done = _cli("match", files["image"], files["a"], "--all", "--threshold", "0.9", "--top", "2")
    assert done.returncode == 2 and "--all and --top" in done.stderr


def test_scales_and_rotations_that_cannot_fit_are_skipped_with_a_warning(files) -> None:
    done = _cli("match", files["image"], files["a"], "--scales", "0.01,1,100", "--json")
    assert done.returncode == 0, done.stderr
    assert "warning: skipped --scales 0.01, 100" in done.stderr
    row = json.loads(done.stdout)[0]
    assert (round(row["y"], 2), round(row["x"], 2), row["scale"]) == (30.0, 38.0, 1.0)
    # the 120 × 160 image holds the 21 × 17 template upright and on its side, not at 45° and scale 5
    done = _cli("match", files["image"], files["turned"], "--rotations", "0:360:45", "--scales", "1,5", "--json")
    assert done.returncode == 0, done.stderr
    assert "warning: skipped --rotations 45, 135, 225, 315" in done.stderr
    assert json.loads(done.stdout)[0]["angle"] == 270.0
    done = _cli("match", files["image"], files["a"], "--scales", "0.01,100")
    assert done.returncode == 2 and "no rotation and scale asked for fits template a.png" in done.stderr


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--top", "0"], "--top must be at least 1, got 0"),
        (["--min-distance", "0"], "--min-distance must be at least 1, got 0"),
        (["--stride", "0"], "--stride must be at least 1, got 0"),
        (["--metric", "nope"], "--metric must be one of"),
        (["--memory-limit", "1K", "--rotations", "0:360:30"], "raise --memory-limit to at least"),
        (["--bogus"], "(see slidesim match --help)"),
    ],
)
def test_errors_name_the_command_lines_options(files, argv, text) -> None:
    done = _cli("match", files["image"], files["a"], *argv)
    assert done.returncode == 2
    assert text in done.stderr and "`" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_files_and_directories_are_named_for_what_they_are(files, tmp_path) -> None:
    done = _cli("match", files["image"], tmp_path / "nope.png")
    assert "template file" in done.stderr and "does not exist" in done.stderr and "image file" not in done.stderr
    done = _cli("match", tmp_path, files["a"])
    assert done.returncode == 2 and "is a directory" in done.stderr and "does not exist" not in done.stderr
    done = _cli("match", files["image"], tmp_path)
    assert done.returncode == 2 and f"template {str(tmp_path)!r} is a directory" in done.stderr
    done = _cli("match")
    assert "see slidesim match --help" in done.stderr and "slidesim slidesim" not in done.stderr
    assert "see slidesim --help" in _cli("nope").stderr


def test_a_colour_template_on_a_grey_image_is_refused_unless_grey(files, tmp_path) -> None:
    colour = tmp_path / "colour.png"
    Image.fromarray(np.repeat(files["array"][20:41, 30:47, None], 3, axis=2)).save(colour)
    done = _cli("match", files["image"], colour, "--json")
    assert done.returncode == 2 and "colour (3 channels)" in done.stderr and "--grey" in done.stderr
    done = _cli("match", files["image"], colour, "--json", "--grey")
    assert done.returncode == 0, done.stderr
    assert (round(json.loads(done.stdout)[0]["y"], 2), round(json.loads(done.stdout)[0]["x"], 2)) == (30.0, 38.0)


def test_help_has_examples_units_and_directions() -> None:
    text = " ".join(_cli("match", "--help").stdout.split())
    for needed in (
        "examples:",
        "slidesim match screen.png icon.png --all --threshold 0.9",
        "y and x are the centre of the matched template, in image pixels",
        "sad, mad, ssd and ssd_normed are distances, minimized",
    ):
        assert needed in text
    assert "examples:" in _cli("explain", "--help").stdout


def test_explain_takes_every_option_of_match(files) -> None:
    options = ["--top", "3", "--threshold", "0.5", "--min-distance", "4", "--rotations", "0:360:90"]
    options += ["--scales", "0.9,1.1", "--mode", "same", "--no-subpixel", "--json", "--quiet"]
    done = _cli("explain", files["image"], files["a"], *options)
    assert done.returncode == 0, done.stderr
    assert "against 8 templates" in done.stdout and "(same," in done.stdout  # 4 angles × 2 scales
    done = _cli("explain", files["image"], files["a"], "--all", "--threshold", "0.5")
    assert done.returncode == 0 and "against 1 template 21x17" in done.stdout
    assert "1 templates" not in done.stdout
    match_options = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["match"]._actions}
    explain_options = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["explain"]._actions}
    assert match_options == explain_options


# a part at any angle and scale: --rotations START:STOP and --scales START:STOP are continuous ranges

POSE = (31.0, 1.12)  # the angle and scale at which the scene holds the part


@pytest.fixture(scope="module")
def posed(tmp_path_factory) -> dict:
    """A 200 × 200 crop of the camera photograph turned by 31° and scaled by 1.12 about the centre of a 48 × 48
    part cut from the unturned crop (PNG files), and that centre (y, x)."""
    skimage_data = pytest.importorskip("skimage.data")
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path_factory.mktemp("posed")
    photo = cv2.GaussianBlur(skimage_data.camera()[60:260, 150:350].astype(np.float32), (0, 0), 0.7)
    top, left, size = 70, 80, 48
    centre = (top + (size - 1) / 2, left + (size - 1) / 2)
    turn = cv2.getRotationMatrix2D((centre[1], centre[0]), *POSE)
    scene = cv2.warpAffine(photo, turn, (200, 200), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    paths = {"scene": folder / "scene.png", "part": folder / "part.png", "centre": centre}
    Image.fromarray(np.clip(np.round(scene), 0, 255).astype(np.uint8)).save(paths["scene"])
    Image.fromarray(np.round(photo[top : top + size, left : left + size]).astype(np.uint8)).save(paths["part"])
    return paths


def _turn(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_two_numbers_are_a_continuous_range() -> None:
    assert cli.parse_range("0:360", "rotations", False) == slidesim.interval(0, 360)
    assert cli.parse_range("0.8:1.25", "scales", True) == slidesim.interval(0.8, 1.25)
    assert cli.parse_range("0:360:90", "rotations", False) == [0.0, 90.0, 180.0, 270.0]  # three keep a grid


def test_ranges_find_a_part_at_any_angle_and_scale_and_draw_its_turned_outline(posed, tmp_path) -> None:
    overlay = tmp_path / "found.png"
    argv = [posed["scene"], posed["part"], "--rotations", "0:360", "--scales", "0.8:1.25", "--json"]
    row = json.loads(_subprocess_match(*argv, "--overlay", overlay))[0]
    cy, cx = posed["centre"]
    assert abs(row["y"] - cy) < 0.5 and abs(row["x"] - cx) < 0.5
    assert _turn(row["angle"], POSE[0]) < 0.5 and abs(row["scale"] / POSE[1] - 1) < 0.01
    assert row["score"] > 0.98
    assert row["height"] == pytest.approx(48 * POSE[1] * (math.cos(math.radians(31)) + math.sin(math.radians(31))) - 1,
                                          abs=1)  # fmt: skip
    # the overlay's outline is the part's square turned by the angle and scaled by the scale, about the centre
    with Image.open(overlay) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    red = np.abs(pixels - [0xE6, 0x19, 0x4B]).max(axis=-1) < 40  # the first template's colour
    corners = draw.box_corners(row["y"], row["x"], 48, 48, row["angle"], row["scale"])  # (x, y)
    ys, xs = np.nonzero(red[:, :])
    points = np.stack([xs, ys], axis=1).astype(float)
    near_edge = np.zeros(len(points), bool)
    for a, b in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        along = np.clip(((points - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        near_edge |= np.linalg.norm(points - (a + along[:, None] * (b - a)), axis=1) < 2.5
    inside_box = (np.abs(points[:, 1] - row["y"]) < row["height"] / 2 + 3) & (
        np.abs(points[:, 0] - row["x"]) < row["width"] / 2 + 3
    )
    outline = points[inside_box & ~near_edge]
    centre_mark = np.abs(outline - [row["x"], row["y"]]).max(axis=1) < 6
    assert len(outline[~centre_mark]) < 0.05 * inside_box.sum()  # the red inside the box is its turned outline
    for corner in corners:  # and the outline reaches every turned corner
        assert (np.linalg.norm(points - corner, axis=1) < 3).any()


def test_the_pyramid_scores_at_least_the_exhaustive_search_on_a_narrow_range(posed) -> None:
    argv = [posed["scene"], posed["part"], "--rotations", "26:36", "--scales", "1.05:1.2", "--json"]
    pyramid = json.loads(_subprocess_match(*argv, "--search", "pyramid", "--beam", "4"))[0]
    exhaustive = json.loads(_subprocess_match(*argv, "--search", "exhaustive"))[0]
    assert pyramid["score"] >= exhaustive["score"] - 1e-4
    assert _turn(pyramid["angle"], exhaustive["angle"]) < 0.5
    assert abs(pyramid["y"] - exhaustive["y"]) < 0.5 and abs(pyramid["x"] - exhaustive["x"]) < 0.5


def test_a_heatmap_keeps_the_exhaustive_search_and_the_pyramid_refuses_it(posed, tmp_path) -> None:
    heatmap = tmp_path / "heat.png"
    argv = ["match", posed["scene"], posed["part"], "--rotations", "26:36", "--scales", "1.05:1.2"]
    done = _cli(*argv, "--heatmap", heatmap)
    assert done.returncode == 0, done.stderr
    assert _png_size(heatmap)[0] > 100
    for extra in (["--search", "pyramid"], ["--levels", "1"]):
        done = _cli(*argv, "--figure", tmp_path / "figure.png", *extra)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert "--figure draw the score maps of the exhaustive search" in done.stderr and "`" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--search", "pyramid", "--levels", "9"], "--levels must be at most"),
        (["--search", "pyramid", "--mode", "same"], "--search 'pyramid' cannot search mode 'same'"),
        (["--search", "pyramid", "--all", "--threshold", "0.9"], "--all keeps every match above --threshold"),
        (["--search", "exhaustive", "--beam", "3"], "--search exhaustive takes neither"),
        (["--beam", "0"], "--beam must be at least 1"),
        (["--search", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_pose_search_errors_name_the_options(posed, argv, text) -> None:
    done = _cli("match", posed["scene"], posed["part"], "--rotations", "0:360", *argv)
    assert done.returncode == 2
    assert text in done.stderr and "`" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_scale_range_beyond_the_image_is_narrowed_with_a_warning(posed) -> None:
    done = _cli("match", posed["scene"], posed["part"], "--scales", "1:9", "--search", "exhaustive", "--json")
    assert done.returncode == 0, done.stderr
    assert "warning: narrowed --scales 1:9 to 1:" in done.stderr
    done = _cli("match", posed["scene"], posed["part"], "--scales", "5:9")
    assert done.returncode == 2 and "no scale asked for fits template part.png" in done.stderr


def test_the_help_shows_ranges_and_the_search() -> None:
    text = " ".join(_cli("match", "--help").stdout.split())
    assert "slidesim match scene.png part.png --rotations 0:360 --scales 0.8:1.25 --overlay found.png" in text
    assert "--search {auto,pyramid,exhaustive}" in text and "--levels N" in text and "--beam N" in text


def test_explain_says_which_pose_search_match_would_run(posed) -> None:
    done = _cli("explain", posed["scene"], posed["part"], "--rotations", "0:360", "--scales", "0.8:1.25")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("search: pyramid: ") and "coarsest template 12x12" in lines[0]
    assert lines[1] == "  why: the pyramid is estimated cheaper" and lines[2].startswith("  cost: roughly ")
    assert "slidesim plan: zncc" in done.stdout
    done = _cli("explain", posed["scene"], posed["part"], "--rotations", "0:360:10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("search: exhaustive: 36 poses (36 angles x 1 scale)")
    assert "why: a sequence of poses is searched exhaustively (--search pyramid searches it coarse to fine)" in (
        done.stdout
    )
    done = _cli("explain", posed["scene"], posed["part"], "--rotations", "0:360", "--heatmap", "h.png")
    assert done.returncode == 0 and "why: --search exhaustive" in done.stdout  # a heat map keeps the maps
