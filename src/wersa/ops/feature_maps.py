"""Random feature maps for kernelised attention.

* :func:`softmax_kernel_features` — positive random features (FAVOR+, Choromanski et
  al. 2020): ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``, so that
  ``E[phi(q)^T phi(k)] = exp(q . k)`` for ``W`` with rows ~ N(0, I) (orthogonal rows
  keep the expectation and lower the variance).
* :func:`relu_features` — ``relu(W x) / sqrt(m)``: an arc-cosine kernel, *not*
  softmax. Positively homogeneous, so an input scale (a bandwidth) cancels between
  the numerator and denominator of linear attention.
* :func:`orthogonal_random_matrix` — the ``(m, d)`` projection, drawn from a
  ``torch.Generator`` so features are reproducible and can be saved with a model.

Stabilisers and the future. Performer implementations subtract ``max(W x)`` to
avoid overflow; for *keys* a max over the whole sequence lets a future key change
the features of past keys (the causal leak of performer-pytorch 1.1.4). Here:

* queries may be shifted by their own row max (``stabilize=True``): one constant
  per query row, which cancels exactly between numerator and denominator;
* keys are shifted only by a constant per head that never looks at any token
  (:func:`normalized_key_shift`), which also cancels in the ratio. Unshifted, the
  exponent is bounded above by ``max_i |w_i|^2 / 2`` (maximise
  ``|w| |x| - |x|^2 / 2`` over ``|x|``), so fp32/bf16 cannot overflow; but for
  l2-normalised keys at a small bandwidth ``b`` every exponent is very negative
  (``w.k^ - 1/(2 b^2)``), the features underflow below the denominator guard and the
  layer stops learning. The shift lifts the largest possible key exponent to a fixed
  headroom. Half-precision inputs are computed in fp32 by the callers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonal_random_matrix(
    num_features: int, dim: int, *, scaling: str = "gaussian",
    generator: torch.Generator | None = None, device=None, dtype=None,
) -> Tensor:
    """An ``(num_features, dim)`` matrix of stacked orthogonal blocks.

    Rows within each block of ``dim`` rows are orthogonal. ``scaling="gaussian"``
    gives each row the norm of a Gaussian vector (chi distributed), so marginally
    every row is ~ N(0, I) and the softmax-kernel estimator stays unbiased;
    ``scaling="sqrt_dim"`` gives every row norm ``sqrt(dim)``.
    """
    if num_features <= 0 or dim <= 0:
        raise ValueError(f"num_features and dim must be positive, got {num_features}, {dim}")
    if scaling not in ("gaussian", "sqrt_dim"):
        raise ValueError(f"scaling must be 'gaussian' or 'sqrt_dim', got {scaling!r}")
    blocks = []
    remaining = num_features
    while remaining > 0:
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique (Haar-distributed) Q
        blocks.append(q.T[: min(dim, remaining)])
        remaining -= dim
    w = torch.cat(blocks, dim=0)
    if scaling == "gaussian":
        norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    else:
        norms = torch.full((num_features,), math.sqrt(dim), dtype=torch.float64)
    w = w * norms.unsqueeze(1)
    return w.to(device=device, dtype=dtype or torch.get_default_dtype())


def gaussian_random_matrix(
    num_features: int, dim: int, *, std: float = 1.0, generator: torch.Generator | None = None,
    device=None, dtype=None,
) -> Tensor:
    """An ``(num_features, dim)`` matrix of i.i.d. ``N(0, std^2)`` entries."""
    w = torch.randn(num_features, dim, generator=generator, dtype=torch.float64) * std
    return w.to(device=device, dtype=dtype or torch.get_default_dtype())


def normalized_key_shift(omega: Tensor, bandwidth: Tensor, headroom: float = 30.0) -> Tensor:
    """Per-head constant to subtract from the key exponents of l2-normalised keys.

    For keys ``k^ = k / (|k| b)`` the exponent ``w_i . k^ - |k^|^2 / 2`` is at most
    ``max_i |w_i| / b - 1 / (2 b^2)``; subtracting
    ``s = max_i |w_i| / b - 1 / (2 b^2) - headroom`` puts that maximum at ``headroom``
    (``exp(30) ~ 1e13``: no overflow in fp32), whatever ``b``. ``s`` depends on
    ``Omega`` and ``b`` only, never on a token, so it cannot leak the future, and it
    cancels between the numerator and denominator of linear attention. Detached.

    Args:
        omega: ``(H, m, d)`` or ``(m, d)``; bandwidth: ``(H,)`` or scalar.
    Returns:
        ``(H,)`` (or scalar) shift.
    """
    longest = torch.linalg.vector_norm(omega.detach(), dim=-1).amax(-1)
    b = bandwidth.detach().to(longest.dtype)
    return longest / b - 0.5 / (b * b) - headroom


def softmax_kernel_features(x: Tensor, omega: Tensor, *, stabilize: bool = False,
                            shift: Tensor | None = None) -> Tensor:
    """Positive random features of the softmax kernel ``exp(q . k)``.

    Args:
        x: ``(..., N, d)`` inputs, already scaled (e.g. ``q / d^{1/4}`` for the
            usual ``softmax(q k^T / sqrt(d))``).
        omega: ``(m, d)`` or ``(H, m, d)`` projection (``H`` matching ``x.shape[-3]``).
        stabilize: subtract each row's max exponent. Only for queries: the shift is
            one constant per query, which cancels in linear attention's ratio.
        shift: a constant subtracted from every exponent, ``(H,)`` per head (matching
            ``x.shape[-3]``) or a scalar; for keys, :func:`normalized_key_shift`.
    Returns:
        ``(..., N, m)`` features, positive.
    """
    m = omega.shape[-2]
    proj = x @ omega.transpose(-1, -2)  # (..., N, m)
    exponent = proj - 0.5 * (x * x).sum(-1, keepdim=True)
    if stabilize:
        exponent = exponent - exponent.amax(-1, keepdim=True).detach()
    if shift is not None:
        exponent = exponent - (shift.view(-1, 1, 1) if shift.dim() else shift).to(exponent.dtype)
    return torch.exp(exponent) * (1.0 / math.sqrt(m))


def softmax_kernel_features_reference(x: Tensor, omega: Tensor) -> Tensor:
    """Naive per-element form of :func:`softmax_kernel_features` (no stabiliser), for tests."""
    m = omega.shape[-2]
    w = omega if omega.dim() == 3 else omega.unsqueeze(0)
    out = torch.empty(x.shape[:-1] + (m,), dtype=x.dtype, device=x.device)
    for idx in range(m):
        w_i = w[..., idx, :]  # (H or 1, d)
        w_i = w_i.view(*([1] * (x.dim() - 3)), w_i.shape[0], 1, w_i.shape[-1])
        out[..., idx] = torch.exp((x * w_i).sum(-1) - 0.5 * (x * x).sum(-1)) / math.sqrt(m)
    return out


def relu_features(x: Tensor, omega: Tensor) -> Tensor:
    """ReLU random features ``relu(x W^T) / sqrt(m)``: ``(..., N, d) -> (..., N, m)``."""
    m = omega.shape[-2]
    return torch.relu(x @ omega.transpose(-1, -2)) * (1.0 / math.sqrt(m))
