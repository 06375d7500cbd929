"""Correlation through torch.fft: Σ_c Σ_taps kernel · image for a whole bank, the image transformed once.

Used by the FFT engine for the cross term and by the fast engines for masked window sums in float64 (where
exact zeros are not needed: degenerate windows are decided by the exact flat test).
"""

from __future__ import annotations

import torch

from .._scoring import Geometry


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


def fft_correlate(image: torch.Tensor, kernel: torch.Tensor, geom: Geometry, chunk_bytes: int) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] (Bk ∈ {1, B}) -> [B, T, H', W'].

    Temporaries: the image spectrum (about twice the image) and, per chunk of templates, one channel's kernel
    spectra, their product with the image spectrum and its inverse transform, sized by ``chunk_bytes``.
    """
    kernel = kernel.to(image.dtype)
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
    chunk = template_chunk(size, B, Bk, T, image.element_size(), chunk_bytes)
    out = None
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        product = None
        for c in range(C):  # channels summed in the frequency domain, one channel's kernel spectra at a time
            kernel_spectrum = _kernel_spectrum(kernel[:, t0:t1, c], size).conj()  # [Bk, t, Hf, Wf // 2 + 1]
            if product is None:
                product = image_spectrum[:, None, c] * kernel_spectrum
            else:
                product.addcmul_(image_spectrum[:, None, c], kernel_spectrum)
            del kernel_spectrum
        full = torch.fft.irfft2(product, s=size)
        del product
        if chunk >= T:
            return full[..., rows, cols]
        if out is None:
            out = full.new_empty(B, T, geom.out_height, geom.out_width)
        out[:, t0:t1] = full[..., rows, cols]
    return out


def template_chunk(size: tuple[int, int], batch: int, bank_batch: int, n_templates: int, item: int, budget: int) -> int:
    """Templates per chunk so that a chunk's kernel spectra, product and inverse transform fit ``budget`` bytes."""
    plane = size[0] * (size[1] // 2 + 1) * 2 * item  # one complex half-spectrum
    per_template = (bank_batch + batch) * plane + batch * size[0] * size[1] * item
    return int(max(1, min(n_templates, budget // max(1, per_template))))


def _kernel_spectrum(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of kernels [..., h, w] zero-padded to size: the row transforms run on the h rows that hold taps only,
    which halves the cost for small kernels."""
    return torch.fft.fft(torch.fft.rfft(kernel, n=size[1], dim=-1), n=size[0], dim=-2)
