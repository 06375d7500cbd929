"""The FFT engine: the cross term of the correlation metrics through torch.fft.

The image spectrum is computed once per call and reused for every template of the bank; channels are summed in
the frequency domain, so one inverse transform yields each template's map. Transform sizes are rounded up to
products of 2, 3, 5 and 7. Window statistics come from float64 box sums (:mod:`slidesim.engines._fast`); the cross
term of ccoeff and zncc correlates the centred image with the mean-removed template, which keeps the float32
transform's round-off small against the window's own variation. Best for large templates.
"""

from __future__ import annotations

import torch

from .._scoring import geometry, padded_images, score_channels
from .._validate import Canonical, Problem
from ._fast import FastStatistics, correlation_ineligible_reason
from .direct import block_elements

NAME = "fft"


def unavailable_reason() -> str | None:
    """torch.fft ships with torch."""
    return None


def ineligible_reason(problem: Problem) -> str | None:
    """Correlation metrics on finite images."""
    return correlation_ineligible_reason(problem)


def next_fast_length(n: int) -> int:
    """The smallest m >= n whose prime factors are all in {2, 3, 5, 7}."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


class FFTPrimitives(FastStatistics):
    """Correlations by FFT, the image spectrum shared by every template."""

    def correlate(self, image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W']."""
        kernel = kernel.to(image.dtype)
        geom = self.geom
        (sy, sx), (dy, dx) = geom.stride, geom.dilation
        B, C, Hp, Wp = image.shape
        Bk, T, _, h, w = kernel.shape
        if dy > 1 or dx > 1:  # spread the taps: a dilated kernel is an ordinary kernel with zeros between taps
            spread = kernel.new_zeros(Bk, T, C, dy * (h - 1) + 1, dx * (w - 1) + 1)
            spread[..., ::dy, ::dx] = kernel
            kernel = spread
        size = (next_fast_length(Hp), next_fast_length(Wp))
        image_spectrum = torch.fft.rfft2(image, s=size)  # [B, C, Hf, Wf // 2 + 1], once for the whole bank
        rows = slice(0, (geom.out_height - 1) * sy + 1, sy)
        cols = slice(0, (geom.out_width - 1) * sx + 1, sx)
        per_template = B * C * size[0] * (size[1] // 2 + 1) * 2 * image.element_size()
        chunk = max(1, min(T, self.block * image.element_size() // max(1, per_template)))
        parts = []
        for t0 in range(0, T, chunk):
            kernel_spectrum = _kernel_spectrum(kernel[:, t0 : t0 + chunk], size).conj()
            product = image_spectrum[:, None, 0] * kernel_spectrum[:, :, 0]  # [B, t, Hf, Wf // 2 + 1]
            for c in range(1, C):  # channels summed in the frequency domain
                product.addcmul_(image_spectrum[:, None, c], kernel_spectrum[:, :, c])
            full = torch.fft.irfft2(product, s=size)
            parts.append(full[..., rows, cols])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _kernel_spectrum(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of kernels [..., h, w] zero-padded to size: the row transforms run on the h rows that hold taps only,
    which halves the cost for small kernels."""
    return torch.fft.fft(torch.fft.rfft(kernel, n=size[1], dim=-1), n=size[0], dim=-2)


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    prims = FFTPrimitives(geometry(canon), block_elements(canon.memory_limit, image.element_size()))
    return score_channels(prims, canon, image)
