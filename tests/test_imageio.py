"""Reading image files: a template's alpha is its mask, and files of every bit depth share one scale."""

from __future__ import annotations

import numpy as np
import pytest

import slidesim
from slidesim.imageio import open_lazy, read_image, read_template

from .conftest import cut_out

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")


def _write_cut_out(tmp_path, fmt: str) -> tuple:
    """The cut-out's scene as an RGB PNG and its template as ``fmt``: an RGBA PNG or TIFF, or a grey PNG with
    alpha ("LA"). Returns (scene path, template path, the template's true centre)."""
    scene, template, truth = cut_out()
    scene_path = tmp_path / "scene.png"
    if fmt == "LA":
        Image.fromarray(scene.mean(axis=-1).round().astype(np.uint8)).save(scene_path)
        grey = template[..., :3].mean(axis=-1).round().astype(np.uint8)
        template = np.stack([grey, template[..., 3]], axis=-1)
    else:
        Image.fromarray(scene).save(scene_path)
    template_path = tmp_path / ("template.tif" if fmt == "TIFF" else "template.png")
    if fmt == "TIFF":
        tifffile.imwrite(template_path, template, photometric="rgb", extrasamples=["unassalpha"])
    else:
        Image.fromarray(template, mode=fmt if fmt == "LA" else "RGBA").save(template_path)
    return scene_path, template_path, truth


@pytest.mark.parametrize(("fmt", "metric"), [("RGBA", "zncc"), ("RGBA", "sad"), ("TIFF", "zncc"), ("LA", "sad")])
def test_a_templates_alpha_is_its_mask_and_finds_the_true_spot(tmp_path, fmt, metric) -> None:
    scene_path, template_path, truth = _write_cut_out(tmp_path, fmt)
    image = read_image(scene_path)
    template, mask = read_template(template_path)
    assert template.shape == (1, image.shape[1], 31, 31) and mask.shape == (31, 31)
    assert mask.dtype == np.float32 and set(np.unique(mask).tolist()) == {0.0, np.float32(128 / 255), 1.0}
    found = slidesim.match(image, template, metric=metric, mask=mask)
    assert abs(found.y[0] - truth[0]) < 0.1 and abs(found.x[0] - truth[1]) < 0.1
    # the colours the transparent pixels hold lead elsewhere: to where the disc was cut from
    colours, no_mask = read_template(template_path, alpha=False)
    assert no_mask is None and np.array_equal(colours, template)
    elsewhere = slidesim.match(image, colours, metric=metric)
    assert abs(elsewhere.y[0] - truth[0]) > 10


def test_an_opaque_alpha_or_none_gives_no_mask_and_the_image_reader_drops_alpha(tmp_path) -> None:
    _, rgba, _ = cut_out()
    opaque = rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, mode="RGBA").save(tmp_path / "opaque.png")
    Image.fromarray(opaque[..., :3]).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    template, mask = read_template(tmp_path / "opaque.png")
    assert mask is None
    assert np.array_equal(template, read_template(tmp_path / "rgb.png")[0])
    assert read_template(tmp_path / "rgb.png")[1] is None
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (1, 3, 31, 31)
    np.testing.assert_array_equal(image, np.moveaxis(rgba[..., :3], -1, 0)[None] / np.float32(255))


def test_a_palette_with_a_transparent_entry_gives_a_binary_mask(tmp_path) -> None:
    indices = np.zeros((6, 8), np.uint8)
    indices[2:5, 3:7] = 1
    picture = Image.fromarray(indices, mode="P")
    picture.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    picture.save(tmp_path / "palette.png", transparency=0)
    template, mask = read_template(tmp_path / "palette.png")
    np.testing.assert_array_equal(mask, (indices == 1).astype(np.float32))
    assert template.shape == (1, 3, 6, 8)


def test_a_fully_transparent_template_is_refused(tmp_path) -> None:
    Image.fromarray(np.zeros((5, 5, 4), np.uint8), mode="RGBA").save(tmp_path / "clear.png")
    with pytest.raises(slidesim.SlidesimValueError, match=r"fully transparent.*ignore the alpha"):
        read_template(tmp_path / "clear.png")
    template, mask = read_template(tmp_path / "clear.png", alpha=False)
    assert mask is None and template.shape == (1, 3, 5, 5)


def test_eight_and_sixteen_bit_files_share_one_scale(tmp_path) -> None:
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # the same picture at 16 bits: 255 -> 65535
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    tifffile.imwrite(tmp_path / "sixteen.tif", sixteen)
    tifffile.imwrite(tmp_path / "float.tif", eight.astype(np.float32) / 255)
    want = read_image(tmp_path / "eight.png")
    assert want.dtype == np.float32 and want.max() <= 1.0
    for name in ("sixteen.png", "sixteen.tif", "float.tif"):
        np.testing.assert_allclose(read_image(tmp_path / name), want, rtol=0, atol=1e-6, err_msg=name)
    lazy = open_lazy(tmp_path / "sixteen.tif", chunk=8)
    assert lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), read_image(tmp_path / "sixteen.tif"))


def test_a_sixteen_bit_image_with_an_eight_bit_template_finds_the_true_spot(tmp_path) -> None:
    rng = np.random.default_rng(2)
    eight = np.round(255 * np.kron(rng.random((6, 8)), np.ones((10, 10)))).astype(np.uint8)
    noise = rng.integers(0, 200, eight.shape)  # the low bits of a 16-bit camera
    sixteen = np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "camera16.tif", sixteen)
    Image.fromarray(eight[25:40, 33:51]).save(tmp_path / "part.png")
    found = slidesim.match(read_image(tmp_path / "camera16.tif"), read_template(tmp_path / "part.png")[0], metric="sad")
    assert (round(found.y[0], 2), round(found.x[0], 2)) == (32.0, 41.5)
