"""The numba drawing of turned and scaled templates against torch's grid sampler (the banks' drawing without numba)."""

from __future__ import annotations

import pytest
import torch

from slidesim import banks

pytest.importorskip("slidesim.kernels.numba_draw")


@pytest.mark.parametrize(
    ("shape", "mask_channels"), [((1, 1, 1, 9, 14), None), ((2, 3, 3, 12, 7), 3), ((1, 2, 3, 10, 10), 1)]
)
@pytest.mark.parametrize("scales", [[1.0], [0.6, 1.35]])
def test_drawing_agrees_with_the_sampler(shape, mask_channels, scales, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(1)
    templates = torch.rand(*shape, generator=gen, dtype=torch.float64)
    mask = None
    if mask_channels is not None:
        mask = torch.rand(1, shape[1], mask_channels, *shape[-2:], generator=gen, dtype=torch.float64)
    angles = [0.0, 12.5, 90.0, 181.0, 229.3, 359.9]
    stream = banks.TransformStream(templates, mask, angles, scales)
    pictures, weights = stream.draw(0, stream.members)
    monkeypatch.setattr(banks, "fused_statistics_available", lambda: False)
    want_pictures, want_weights = banks.TransformStream(templates, mask, angles, scales).draw(0, stream.members)
    assert pictures.shape == want_pictures.shape and weights.shape == want_weights.shape
    torch.testing.assert_close(pictures, want_pictures, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights, want_weights, rtol=0, atol=1e-12)
    assert bool((weights[..., 0, 0] == 0).any())  # the turned corners leave the template: weight 0 there


def test_the_identity_draws_the_template_itself() -> None:
    templates = torch.rand(1, 1, 1, 7, 9, dtype=torch.float64)  # odd sides: the canvas is the template
    pictures, weights = banks.TransformStream(templates, None, [0.0], [1.0]).draw(0, 1)
    assert torch.equal(pictures[0, 0], templates[0, 0])
    assert bool((weights == 1).all())


def test_a_template_that_keeps_no_weight_is_refused() -> None:
    templates = torch.rand(1, 1, 1, 4, 4, dtype=torch.float64)
    mask = torch.zeros(1, 1, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="must leave every template some weight"):
        banks.TransformStream(templates, mask, [30.0], [1.0]).draw(0, 1)
