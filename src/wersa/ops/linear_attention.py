"""Kernelised (linear) attention: bidirectional, causal chunked, and recurrent.

Given feature maps ``phi_q = phi(q)``, ``phi_k = phi(k)`` of shape ``(B, H, N, m)``
and values ``v`` of shape ``(B, H, N, d)``::

    bidirectional: y_i = phi_q_i^T S / (phi_q_i^T z + eps),   S = sum_j phi_k_j v_j^T,  z = sum_j phi_k_j
    causal:        the same with S_i, z_i summed over j <= i only

``normalize=False`` drops the denominator (TransNormer's NormAttention), giving
``y_i = phi_q_i^T S_i``.

The causal form is computed in chunks of ``chunk_size`` tokens: a masked
``chunk x chunk`` product inside each chunk plus the state carried from earlier
chunks. It never materialises an ``N x m x d`` tensor (a plain prefix sum would).
The denominator rides along as an extra column of ones appended to ``v``, so
numerator and denominator come out of the same matrix products.

Padded keys (``key_mask`` False) are removed from ``S`` and ``z`` by zeroing their
features. :func:`linear_attention_reference` is the explicit ``O(N^2)`` formula
every fast path is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import compute_dtype


class LinearAttentionState(NamedTuple):
    """Running sums of a causal linear attention.

    S: ``(B, H, m, d)`` = sum_j phi_k_j v_j^T;  z: ``(B, H, m)`` = sum_j phi_k_j.
    """

    S: Tensor
    z: Tensor


def _mask_keys(phi_k: Tensor, key_mask: Tensor | None) -> Tensor:
    if key_mask is None:
        return phi_k
    return phi_k * key_mask[:, None, :, None].to(phi_k.dtype)


def linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, key_mask: Tensor | None = None,
    eps: float = 1e-6, normalize: bool = True,
) -> Tensor:
    """Bidirectional linear attention.

    Args:
        phi_q, phi_k: ``(B, H, N, m)`` query / key features.
        v: ``(B, H, N, d)`` values.
        key_mask: ``(B, N)`` bool, ``True`` for real keys; ``None`` = all real.
    Returns:
        ``(B, H, N, d)``.
    """
    phi_k = _mask_keys(phi_k, key_mask)
    if not normalize:
        return phi_q @ (phi_k.transpose(-1, -2) @ v)
    ones = v.new_ones(v.shape[:-1] + (1,))
    kv = phi_k.transpose(-1, -2) @ torch.cat([v, ones], dim=-1)  # (B, H, m, d+1): [S | z]
    out = phi_q @ kv
    return out[..., :-1] / (out[..., -1:] + eps)


def causal_linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, key_mask: Tensor | None = None,
    eps: float = 1e-6, normalize: bool = True, chunk_size: int = 128,
    initial_state: LinearAttentionState | None = None, return_state: bool = False,
) -> Tensor | tuple[Tensor, LinearAttentionState]:
    """Causal linear attention, chunked: ``O(N * c * (m + d) + N * m * d)`` time.

    Args:
        phi_q, phi_k: ``(B, H, N, m)``; v: ``(B, H, N, d)``.
        key_mask: ``(B, N)`` bool or ``None``.
        chunk_size: tokens per chunk ``c``; any ``N`` (the last chunk is zero-padded).
        initial_state: running sums from earlier tokens (continuing a sequence).
        return_state: also return the sums after the last token.
    Returns:
        ``(B, H, N, d)`` (and the final :class:`LinearAttentionState`).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, H, N, m = phi_q.shape
    d = v.shape[-1]
    phi_k = _mask_keys(phi_k, key_mask)
    # Values carry a ones column so the denominator is computed by the same products.
    vv = torch.cat([v, v.new_ones(B, H, N, 1)], dim=-1) if normalize else v
    e = vv.shape[-1]
    c = min(chunk_size, N)
    pad = (-N) % c
    if pad:
        phi_q = F.pad(phi_q, (0, 0, 0, pad))
        phi_k = F.pad(phi_k, (0, 0, 0, pad))
        vv = F.pad(vv, (0, 0, 0, pad))
    n_chunks = (N + pad) // c
    q_c = phi_q.reshape(B, H, n_chunks, c, m)
    k_c = phi_k.reshape(B, H, n_chunks, c, m)
    v_c = vv.reshape(B, H, n_chunks, c, e)

    # Inside each chunk: (phi_q phi_k^T masked to j <= i) @ v.
    scores = q_c @ k_c.transpose(-1, -2)  # (B, H, C, c, c)
    tril = torch.ones(c, c, dtype=torch.bool, device=phi_q.device).tril()
    out = (scores * tril.to(scores.dtype)) @ v_c  # (B, H, C, c, e)

    # Across chunks: the state before chunk j is the sum of the states of chunks < j.
    chunk_kv = k_c.transpose(-1, -2) @ v_c  # (B, H, C, m, e)
    # Running sums over long sequences lose precision in half types: accumulate in fp32.
    acc = compute_dtype(chunk_kv.dtype)
    prefix = torch.cumsum(chunk_kv, dim=2, dtype=acc)
    before = torch.cat([torch.zeros_like(prefix[:, :, :1]), prefix[:, :, :-1]], dim=2).to(chunk_kv.dtype)
    if initial_state is not None:
        init = initial_state.S
        if normalize:
            init = torch.cat([init, initial_state.z.unsqueeze(-1)], dim=-1)
        before = before + init.unsqueeze(2).to(before.dtype)
    out = out + q_c @ before
    out = out.reshape(B, H, n_chunks * c, e)[:, :, :N]
    y = out[..., :d] / (out[..., d:] + eps) if normalize else out
    if not return_state:
        return y
    final = prefix[:, :, -1].to(chunk_kv.dtype)
    if initial_state is not None:
        final = final + (torch.cat([initial_state.S, initial_state.z.unsqueeze(-1)], -1)
                         if normalize else initial_state.S)
    if normalize:
        state = LinearAttentionState(final[..., :d], final[..., d])
    else:
        z = k_c.sum(dim=(2, 3))
        if initial_state is not None:
            z = z + initial_state.z
        state = LinearAttentionState(final, z)
    return y, state


def linear_attention_init_state(
    batch: int, heads: int, num_features: int, head_dim: int, device=None, dtype=None
) -> LinearAttentionState:
    """Empty running sums for :func:`linear_attention_step`."""
    return LinearAttentionState(
        torch.zeros(batch, heads, num_features, head_dim, device=device, dtype=dtype),
        torch.zeros(batch, heads, num_features, device=device, dtype=dtype),
    )


def linear_attention_step(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, state: LinearAttentionState,
    eps: float = 1e-6, normalize: bool = True,
) -> tuple[Tensor, LinearAttentionState]:
    """One token of causal linear attention: ``O(m d)`` time and memory.

    Args:
        phi_q, phi_k: ``(B, H, m)``; v: ``(B, H, d)``; state: sums over earlier tokens.
    Returns:
        ``(B, H, d)`` and the updated state.
    """
    S = state.S + phi_k.unsqueeze(-1) * v.unsqueeze(-2)
    z = state.z + phi_k
    num = (phi_q.unsqueeze(-2) @ S).squeeze(-2)
    if not normalize:
        return num, LinearAttentionState(S, z)
    den = (phi_q * z).sum(-1, keepdim=True)
    return num / (den + eps), LinearAttentionState(S, z)


def linear_attention_reference(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool, key_mask: Tensor | None = None,
    eps: float = 1e-6, normalize: bool = True,
) -> Tensor:
    """The explicit ``O(N^2)`` formula: ``A = phi_q phi_k^T`` (masked), ``y = A v / rowsum(A)``."""
    A = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N)
    N = A.shape[-1]
    if causal:
        A = A * torch.ones(N, N, dtype=torch.bool, device=A.device).tril().to(A.dtype)
    if key_mask is not None:
        A = A * key_mask[:, None, None, :].to(A.dtype)
    if not normalize:
        return A @ v
    return (A @ v) / (A.sum(-1, keepdim=True) + eps)
