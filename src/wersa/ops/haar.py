"""Orthonormal Haar wavelet transforms along the sequence axis.

All functions work on tensors whose second-to-last axis is the sequence:
``(B, N, d)``, ``(B, H, N, d)``, ...

* :func:`haar_dwt` — ``L``-level decomposition. ``N`` is zero-padded only up to the
  next multiple of ``2^L`` (never to a power of two). The coefficients come in
  PyWavelets' order ``[cA_L, cD_L, ..., cD_1]`` and equal
  ``pywt.wavedec(x, 'haar', level=L)`` on the same padded signal:
  ``cA = (x[2i] + x[2i+1]) / sqrt(2)``, ``cD = (x[2i] - x[2i+1]) / sqrt(2)``.
* :func:`haar_idwt` — perfect reconstruction, cropped back to ``length``.
* :func:`haar_filter` — decompose, multiply every band by its gains, reconstruct:
  the multi-resolution filter of WERSA's bidirectional mode. With every gain equal
  to ``c`` it is exactly ``c * identity`` (the transform is orthonormal). Computed
  from block means (the band projections telescope), not through the DWT.
* :func:`block_mean` — per-token values averaged over the aligned blocks of one
  band (the gain a coefficient receives from per-token gates), counting only
  valid tokens so padding never changes a real block's gain.

Haar is block-local: coefficient ``i`` of level ``l`` depends only on tokens
``i 2^l .. (i+1) 2^l - 1``, so right padding (zeros beyond the real length)
leaves every real position's output unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def _check_levels(levels: int) -> None:
    if not isinstance(levels, int) or levels < 0:
        raise ValueError(f"levels must be a non-negative integer, got {levels!r}")


def padded_length(n: int, levels: int) -> int:
    """Smallest multiple of ``2^levels`` that is ``>= n``."""
    block = 1 << levels
    return -(-n // block) * block


def band_sizes(n: int, levels: int) -> list[int]:
    """Coefficients per band of an ``n``-row signal, in :func:`haar_dwt`'s order ``[cA_L, cD_L, ..., cD_1]``."""
    n_pad = padded_length(n, levels)
    return [n_pad >> levels] + [n_pad >> lv for lv in range(levels, 0, -1)]


def haar_dwt(x: Tensor, levels: int) -> list[Tensor]:
    """``L``-level orthonormal Haar DWT along axis -2.

    Args:
        x: ``(..., N, d)``.
        levels: ``L >= 0``.
    Returns:
        ``[cA_L, cD_L, ..., cD_1]``; ``cA_L`` and ``cD_l`` have ``N_pad / 2^l`` rows,
        where ``N_pad`` is ``N`` rounded up to a multiple of ``2^L``.
    """
    _check_levels(levels)
    n = x.shape[-2]
    pad = padded_length(n, levels) - n
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    details = []
    approx = x
    for _ in range(levels):
        even, odd = approx[..., 0::2, :], approx[..., 1::2, :]
        details.append((even - odd) * _SQRT1_2)
        approx = (even + odd) * _SQRT1_2
    return [approx] + details[::-1]


def haar_idwt(coeffs: list[Tensor], length: int | None = None) -> Tensor:
    """Inverse of :func:`haar_dwt`; crops the result to ``length`` rows if given."""
    approx = coeffs[0]
    for detail in coeffs[1:]:
        even = (approx + detail) * _SQRT1_2
        odd = (approx - detail) * _SQRT1_2
        approx = torch.stack([even, odd], dim=-2).flatten(-3, -2)
    if length is not None:
        approx = approx[..., :length, :]
    return approx


def _broadcast_gain(gain: Tensor, like: Tensor) -> Tensor:
    """``(B, n)`` gains -> shape broadcastable to ``like`` = ``(B, ..., n, d)``."""
    return gain.reshape(gain.shape[0], *([1] * (like.dim() - 3)), gain.shape[1], 1).to(like.dtype)


def _block_means(x: Tensor, levels: int) -> list[Tensor]:
    """``[x, M_1, ..., M_L]``: ``M_l`` ``(..., N / 2^l, d)`` the means of aligned blocks of ``2^l`` rows.

    ``N`` must be a multiple of ``2^L``. Each level averages pairs of the previous one
    (one pass over half the rows of the last), so no long sum loses precision.
    """
    means = [x]
    for _ in range(levels):
        prev = means[-1]
        means.append(torch.add(prev[..., 0::2, :], prev[..., 1::2, :]).mul_(0.5))
    return means


def _filter_from_means(means: list[Tensor], gains: list[Tensor]) -> Tensor:
    """:func:`haar_filter` of ``means[0]`` (padded to a multiple of ``2^L``) from its block means.

    The projection on band ``D_l`` is ``M_{l-1} - M_l`` (``M_0`` the identity) and on ``A_L``
    it is ``M_L``, and every band's gain is constant on that band's blocks, so the filter
    telescopes to::

        y = g_{D_1} x + sum_{l=1..L} (g_{D_{l+1}} - g_{D_l}) M_l x        (g_{D_{L+1}} = g_A)

    Each term lives on ``N / 2^l`` rows; they are summed from the coarsest level down, each
    added to the two children of its block, so the signal-sized work is one fused
    multiply-add at the end.
    """
    levels = len(means) - 1
    x = means[0]
    if levels == 0:
        return x * _broadcast_gain(gains[0], x)
    carry = None
    for level in range(levels, 0, -1):
        detail = gains[levels - level + 1]  # g_{D_l}, one per level-l block
        upper = gains[0] if level == levels else gains[levels - level].repeat_interleave(2, dim=1)
        term = means[level] * _broadcast_gain(upper - detail, means[level])
        if carry is not None:
            term.unflatten(-2, (-1, 2)).add_(carry.unsqueeze(-2))
        carry = term
    pairs = x.unflatten(-2, (-1, 2))
    g_fine = _broadcast_gain(gains[levels], carry).unsqueeze(-1)  # g_{D_1} per pair of rows
    return torch.addcmul(carry.unsqueeze(-2), pairs, g_fine).flatten(-3, -2)


def _check_gains(gains: list[Tensor], levels: int) -> None:
    _check_levels(levels)
    if len(gains) != levels + 1:
        raise ValueError(f"expected {levels + 1} gain tensors (one per band), got {len(gains)}")


def _pad_rows(x: Tensor, levels: int) -> Tensor:
    pad = padded_length(x.shape[-2], levels) - x.shape[-2]
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def haar_filter(x: Tensor, gains: list[Tensor], levels: int) -> Tensor:
    """Scale each Haar band of ``x`` by its gains and reconstruct.

    Equal to ``haar_idwt([g * c for g, c in zip(gains, haar_dwt(x))])`` (and to
    :func:`haar_filter_reference`'s explicit matrix), computed from block means
    (:func:`_filter_from_means`): about 2.5 passes of ``x``-sized memory instead of a
    DWT and an inverse DWT.

    Args:
        x: ``(B, ..., N, d)``.
        gains: in :func:`haar_dwt`'s order ``[g_A, g_D_L, ..., g_D_1]``; each
            ``(B, n_band)`` (one gain per coefficient, shared by the middle axes
            and by ``d``).
        levels: ``L``.
    Returns:
        ``(B, ..., N, d)``.
    """
    _check_gains(gains, levels)
    return haar_filter_rows(x, gains, levels, 0, x.shape[-2])


def block_mean(values: Tensor, block: int, valid: Tensor | None = None) -> Tensor:
    """Average ``(B, N)`` values over aligned blocks of ``block`` tokens.

    ``N`` is padded up to a multiple of ``block``; positions beyond ``N`` and
    positions where ``valid`` is False do not count. A block with no valid
    token gets 0. Returns ``(B, ceil(N / block))``.
    """
    b, n = values.shape
    weight = torch.ones_like(values) if valid is None else valid.to(values.dtype)
    pad = (-n) % block
    if pad:
        values = F.pad(values, (0, pad))
        weight = F.pad(weight, (0, pad))
    total = (values * weight).reshape(b, -1, block).sum(-1)
    count = weight.reshape(b, -1, block).sum(-1)
    return total / count.clamp_min(1.0)


def haar_filter_reference(x: Tensor, gains: list[Tensor], levels: int) -> Tensor:
    """Naive form of :func:`haar_filter` for tests: an explicit ``(N_pad, N_pad)`` matrix per band.

    Builds the orthonormal Haar synthesis matrix ``W`` (rows = basis functions) and
    computes ``W^T diag(g) W x`` per batch element.
    """
    n = x.shape[-2]
    n_pad = padded_length(n, levels)
    xp = F.pad(x, (0, 0, 0, n_pad - n))
    rows, band_of_row, index_in_band = [], [], []
    scale = 2 ** levels
    # approximation basis at level L: constant 1/sqrt(2^L) on each block of 2^L
    for i in range(n_pad // scale):
        r = torch.zeros(n_pad, dtype=torch.float64)
        r[i * scale:(i + 1) * scale] = 1.0 / math.sqrt(scale)
        rows.append(r); band_of_row.append(0); index_in_band.append(i)
    for band, level in enumerate(range(levels, 0, -1), start=1):
        size = 2 ** level
        for i in range(n_pad // size):
            r = torch.zeros(n_pad, dtype=torch.float64)
            r[i * size:i * size + size // 2] = 1.0 / math.sqrt(size)
            r[i * size + size // 2:(i + 1) * size] = -1.0 / math.sqrt(size)
            rows.append(r); band_of_row.append(band); index_in_band.append(i)
    W = torch.stack(rows).to(x.dtype).to(x.device)  # (N_pad, N_pad), orthonormal
    out = []
    for b in range(x.shape[0]):
        g = torch.stack([gains[band_of_row[r]][b, index_in_band[r]] for r in range(n_pad)]).to(x.dtype)
        M = W.T @ torch.diag(g) @ W
        out.append(torch.einsum("st,...td->...sd", M, xp[b]))
    return torch.stack(out)[..., :n, :]


def _band_slices(levels: int, start: int, stop: int) -> list[tuple[int, int]]:
    """Coefficient rows of each band (DWT order) that cover signal rows ``start:stop`` (``start`` a
    multiple of ``2^L``; ``stop`` padded up to a multiple of ``2^L`` past ``start``)."""
    end = start + padded_length(stop - start, levels)
    return [(start >> levels, end >> levels)] + [(start >> lv, end >> lv) for lv in range(levels, 0, -1)]


def haar_filter_rows(x: Tensor, gains: list[Tensor], levels: int, start: int, stop: int) -> Tensor:
    """``haar_filter(x, gains, levels)[..., start:stop, :]`` from rows ``start:stop`` of ``x`` alone.

    The Haar filter is local to aligned blocks of ``2^L`` rows, so with ``start`` a multiple of
    ``2^L`` a range of rows needs only itself and its gains (a consumer can filter block by
    block and never hold the whole filtered signal).
    """
    if start % (1 << levels):
        raise ValueError(f"start must be a multiple of 2^levels = {1 << levels}, got {start}")
    rows = x[..., start:stop, :]
    band_gains = [g[:, lo:hi] for g, (lo, hi) in zip(gains, _band_slices(levels, start, stop))]
    return _filter_from_means(_block_means(_pad_rows(rows, levels), levels), band_gains)[..., :stop - start, :]


def haar_filter_rows_backward(g_y: Tensor, x: Tensor, gains: list[Tensor], levels: int, start: int, stop: int,
                              g_gains: list[Tensor] | None = None) -> Tensor:
    """Gradients of :func:`haar_filter_rows` given ``g_y`` ``(B, ..., stop - start, d)``.

    Returns ``dL/dx`` for rows ``start:stop`` (the filter is self-adjoint); adds the gains'
    gradients into ``g_gains`` (same shapes as ``gains``) when given, formed from block means
    (:func:`_band_products`). ``x``'s means are freed before ``dL/dx`` is allocated.
    """
    slices = _band_slices(levels, start, stop)
    g_means = _block_means(_pad_rows(g_y, levels), levels)
    if g_gains is not None:
        products = _band_products(_block_means(_pad_rows(x[..., start:stop, :], levels), levels), g_means)
        for acc, (lo, hi), prod in zip(g_gains, slices, products):
            acc[:, lo:hi] += prod.to(acc.dtype)
    band_gains = [g[:, lo:hi] for g, (lo, hi) in zip(gains, slices)]
    return _filter_from_means(g_means, band_gains)[..., :stop - start, :]


def _band_products(x_means: list[Tensor], y_means: list[Tensor]) -> list[Tensor]:
    """``<dwt(x)_band, dwt(y)_band>`` per coefficient, summed over the middle axes and ``d``.

    ``(B, n_band)`` per band in DWT order, from :func:`_block_means` of ``x`` and ``y``: the
    coefficients are ``cA_L = 2^(L/2) M_L`` and ``cD_l = 2^(l/2 - 1) (M_{l-1}[2i] - M_{l-1}[2i+1])``.
    """
    levels = len(x_means) - 1
    x = x_means[0]
    shared = tuple(range(1, x.dim() - 2)) + (x.dim() - 1,)
    out = [(x_means[levels] * y_means[levels]).sum(dim=shared).mul_(2.0 ** levels)]
    for level in range(levels, 0, -1):
        xm, ym = x_means[level - 1], y_means[level - 1]
        dx = torch.sub(xm[..., 0::2, :], xm[..., 1::2, :])
        dx.mul_(torch.sub(ym[..., 0::2, :], ym[..., 1::2, :]))
        out.append(dx.sum(dim=shared).mul_(2.0 ** (level - 2)))
    return out


class _HaarFilterLean(torch.autograd.Function):
    """:func:`haar_filter` that saves only its inputs.

    Autograd through :func:`haar_filter` keeps every band's coefficients (one
    ``x``-sized tensor) for the gains' gradient. Here they are recomputed:

    * ``dL/dx = haar_filter(dL/dy, gains)``: the filter ``crop W^T diag(g) W pad`` is
      self-adjoint (``W`` orthonormal, ``crop`` the adjoint of ``pad``);
    * ``dL/dg_band = sum(dwt(x)_band * dwt(dL/dy)_band)`` over the shared axes, the
      coefficients formed from block means (differences of the two halves of a block),
      never the whole DWT.
    """

    @staticmethod
    def forward(ctx, x, levels, *gains):
        ctx.levels = levels
        ctx.save_for_backward(x, *gains)
        return haar_filter(x, list(gains), levels)

    @staticmethod
    def backward(ctx, gy):
        x, *gains = ctx.saved_tensors
        n = x.shape[-2]
        g_gains = [torch.zeros_like(g) for g in gains] if any(ctx.needs_input_grad[2:]) else None
        g_x = haar_filter_rows_backward(gy, x, gains, ctx.levels, 0, n, g_gains)
        return (g_x if ctx.needs_input_grad[0] else None, None, *(g_gains or [None] * len(gains)))


def haar_filter_lean(x: Tensor, gains: list[Tensor], levels: int) -> Tensor:
    """:func:`haar_filter` with a backward pass that recomputes the coefficients (same values and gradients).

    Saves ``x`` and the gains only, instead of ``L + 1`` bands of coefficients.
    """
    _check_gains(gains, levels)
    return _HaarFilterLean.apply(x, levels, *gains)
