"""Orthogonal wavelet transforms (Daubechies ``db1`` = Haar, ``db2``, ...) along the sequence axis.

The transform is PyWavelets' ``mode="zero"`` decomposition: the signal is extended
with zeros on both sides and every coefficient whose filter overlaps it is kept.
With a filter of length ``L`` (``L = 2K`` for ``dbK``), one level maps ``n`` rows to
``m = floor((n + L - 1) / 2)`` approximation and ``m`` detail rows::

    cA[i] = sum_j dec_lo[j] x[2i + 1 - j],   cD[i] = sum_j dec_hi[j] x[2i + 1 - j]
    (x = 0 outside 0..n-1; dec_lo = reversed h, dec_hi[j] = (-1)^(j+1) h[j])

where ``h`` is the orthonormal scaling filter (PyWavelets' ``rec_lo``). These are the
rows of the infinite orthogonal wavelet operator ``W`` that touch the signal; every
other row of ``W x`` is zero, so the synthesis ``x = A^T c`` (the adjoint, cropped)
reconstructs exactly: :func:`wavelet_idwt` is the adjoint of :func:`wavelet_dwt`,
and ``idwt(dwt(x)) = x`` up to rounding for any orthonormal ``h``. (Not for a learnt
filter that drifted from orthonormality: then it is only the adjoint.)

Why this mode: coefficients are anchored at the first token and a coefficient only
touches tokens inside its support, so right padding with zeros adds coefficients
that touch no real token and leaves every other one unchanged
(:func:`dwt_lengths` says how many coefficients of each band touch the real
tokens). ``periodization`` would wrap the end of a sequence onto its start.

Shapes: ``x`` ``(B, N, C)``; the filter is ``(L,)`` (shared by all channels) or
``(C, L)`` (one per channel, as WavSpA's learnable wavelets).
:func:`wavelet_matrix` builds the dense analysis matrix, the naive reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def daubechies_filter(order: int) -> Tensor:
    """Orthonormal Daubechies scaling filter ``h`` of ``dbK`` (``K = order``), length ``2K``,
    float64, minimum phase (PyWavelets' ``rec_lo``; ``sum h = sqrt 2``, ``sum h^2 = 1``).

    Spectral factorisation: ``|H(w)|^2 = 2 cos^2K(w/2) P(sin^2(w/2))`` with
    ``P(y) = sum_{k<K} C(K-1+k, k) y^k``; the roots of ``P`` inside the unit circle
    (in ``z``) give the minimum-phase factor.
    """
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= 20:
        raise ValueError(f"Daubechies order must be an integer in [1, 20], got {order!r}")
    from math import comb

    h = np.array([1.0])
    for _ in range(order):
        h = np.convolve(h, [1.0, 1.0])  # (1 + z^-1)^K
    p = [comb(order - 1 + k, k) for k in range(order)]  # P(y), lowest degree first
    if order > 1:
        for y in np.roots(p[::-1]):
            # y = (2 - z - 1/z) / 4  =>  z^2 - (2 - 4y) z + 1 = 0; keep the root inside the circle.
            zs = np.roots([1.0, -(2.0 - 4.0 * y), 1.0])
            z = zs[np.argmin(np.abs(zs))]
            h = np.convolve(h, [1.0, -z])
    h = np.real(h)
    h = h * (np.sqrt(2.0) / h.sum())
    return torch.tensor(h, dtype=torch.float64, device="cpu")  # real data even under a meta-device context


def wavelet_filter(name: str) -> Tensor:
    """``"haar"`` / ``"dbK"`` -> the scaling filter ``h`` (float64)."""
    if name == "haar":
        return daubechies_filter(1)
    if isinstance(name, str) and name.startswith("db") and name[2:].isdigit():
        return daubechies_filter(int(name[2:]))
    raise ValueError(f"unknown wavelet {name!r}; use 'haar' or 'db1' .. 'db20'")


def _analysis_weight(h: Tensor, channels: int) -> Tensor:
    """``(2C, 1, L)`` conv1d weight, per channel ``[lo, hi]`` (cross-correlation taps)."""
    h = h.expand(channels, -1) if h.dim() == 1 else h
    L = h.shape[-1]
    sign = torch.ones(L, dtype=h.dtype, device=h.device)
    sign[1::2] = -1.0  # tap t of hi is dec_hi[L-1-t] = (-1)^t h[L-1-t] (L even)
    hi = sign * h.flip(-1)
    # conv1d correlates: tap t multiplies x[2i + t - (L-2)]; tap t = dec_lo[L-1-t] = h[t].
    return torch.stack([h, hi], dim=1).reshape(2 * channels, 1, L)


def dwt_lengths(n: int | Tensor, filter_length: int, levels: int):
    """Rows of each band, ``[cA_L, cD_L, ..., cD_1]``, of a length-``n`` signal
    (``n`` an int, or a ``(B,)`` tensor of real lengths)."""
    sizes = []
    for _ in range(levels):
        n = (n + filter_length - 1) // 2
        sizes.append(n)
    return [sizes[-1]] + sizes[::-1] if levels else [n]


def _dwt_level(x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    b, n, c = x.shape
    L = h.shape[-1]
    w = _analysis_weight(h.to(x.dtype), c)
    out = F.conv1d(F.pad(x.transpose(1, 2), (L - 2, L - 1)), w, stride=2, groups=c)
    m = (n + L - 1) // 2
    out = out[..., :m].reshape(b, c, 2, m)
    return out[:, :, 0].transpose(1, 2), out[:, :, 1].transpose(1, 2)


def _idwt_level(ca: Tensor, cd: Tensor, h: Tensor, n: int) -> Tensor:
    b, m, c = ca.shape
    L = h.shape[-1]
    w = _analysis_weight(h.to(ca.dtype), c)
    u = torch.stack([ca, cd], dim=3).reshape(b, m, 2 * c).transpose(1, 2)  # (B, 2C, m), lo/hi per channel
    y = F.conv_transpose1d(u, w, stride=2, groups=c)  # adjoint of the strided correlation
    need = L - 2 + n
    if y.shape[-1] < need:
        y = F.pad(y, (0, need - y.shape[-1]))
    return y[..., L - 2:need].transpose(1, 2)


def wavelet_dwt(x: Tensor, h: Tensor, levels: int) -> list[Tensor]:
    """``levels``-level zero-mode DWT of ``x`` ``(B, N, C)`` with scaling filter ``h``.

    Returns ``[cA_L, cD_L, ..., cD_1]`` (PyWavelets' order), each ``(B, n_l, C)``.
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
        raise ValueError(f"levels must be a non-negative integer, got {levels!r}")
    details = []
    approx = x
    for _ in range(levels):
        approx, d = _dwt_level(approx, h)
        details.append(d)
    return [approx] + details[::-1]


def wavelet_idwt(coeffs: list[Tensor], h: Tensor, length: int) -> Tensor:
    """Adjoint of :func:`wavelet_dwt` for a length-``length`` signal: ``(B, length, C)``.

    For an orthonormal ``h`` it is the inverse: ``wavelet_idwt(wavelet_dwt(x)) = x``.
    """
    levels = len(coeffs) - 1
    sizes = [length]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + h.shape[-1] - 1) // 2)
    approx = coeffs[0]
    for detail, n in zip(coeffs[1:], sizes[::-1]):
        approx = _idwt_level(approx, detail, h, n)
    return approx


def wavelet_matrix(h: Tensor, n: int, levels: int) -> Tensor:
    """Dense analysis matrix ``(sum_l n_l, n)``, rows in the order ``[cA_L, cD_L, ..., cD_1]``,
    built entry by entry from the formula in the module docstring (the naive reference)."""
    h = h.to(torch.float64)
    L = h.shape[0]
    dec_lo = h.flip(0)
    dec_hi = torch.tensor([(-1.0) ** (j + 1) for j in range(L)], dtype=torch.float64) * h
    approx = torch.eye(n, dtype=torch.float64)  # rows: current approximation as a map of x
    details = []
    for _ in range(levels):
        cur = approx.shape[0]
        m = (cur + L - 1) // 2
        lo = torch.zeros(m, cur, dtype=torch.float64)
        hi = torch.zeros(m, cur, dtype=torch.float64)
        for i in range(m):
            for j in range(L):
                t = 2 * i + 1 - j
                if 0 <= t < cur:
                    lo[i, t] += dec_lo[j]
                    hi[i, t] += dec_hi[j]
        details.append(hi @ approx)
        approx = lo @ approx
    return torch.cat([approx] + details[::-1], dim=0)
