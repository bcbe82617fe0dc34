"""Causal linear attention over exponential key features, stabilised by a running max.

Positive random features of keys are ``phi_k_j = exp(l_j)`` with log-features
``l_j`` (``(m,)`` per key). Unshifted, ``exp`` under- or overflows for large keys
(float32's range is ``|l| < 88``); a shift shared by the whole sequence would let a
future key change past outputs. Here query ``i`` uses the running max over the keys it
may see, ``M_i = max_{j <= i} max_f l_j[f]`` (per batch row and head)::

    y_i = sum_{j <= i} (phi_q_i . exp(l_j - M_i)) v_j / (sum_{j <= i} phi_q_i . exp(l_j - M_i) + eps)

which is the unshifted formula with ``eps`` scaled by ``exp(M_i)``: the same rule as a
bidirectional key shift by the max over the sequence, so the last token of a causal
pass equals the bidirectional output of that token. ``M_i`` depends on keys
``j <= i`` only (causal, exactly), and every factor ``exp(l_j - M_i)`` is ``<= 1``.

Computation, chunk by chunk (``c`` tokens): keys are stored as ``exp(l_j - M_j)``;
inside a chunk the weight of key ``j`` for query ``i >= j`` is rescaled by
``exp(M_j - M_i) <= 1`` (masked before ``exp``); the state ``(S, z)`` carried across
chunks is kept relative to the running max ``R`` at its last key and rescaled by
``exp(R - M)`` when the max grows. The recurrent :func:`running_max_attention_step`
does the same one token at a time. The shifts are constants (no gradient), as a
stabiliser should be. :func:`running_max_attention_reference` is the explicit
``O(N^2)`` formula.

Shapes: ``phi_q``: ``(B, H, N, m)`` (non-negative, any per-query scale cancels);
``log_phi_k``: ``(B, H, N, m)`` (``-inf`` for padded keys); ``v``: ``(B, H, N, d)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_NEG_INF = float("-inf")


class RunningMaxState(NamedTuple):
    """``S (B, H, m, d)`` and ``z (B, H, m)`` relative to ``exp(M)``; ``M (B, H)`` the running
    max of key log-features (``-inf`` before the first key)."""

    S: Tensor
    z: Tensor
    M: Tensor


def running_max_init_state(batch: int, heads: int, num_features: int, head_dim: int,
                           device=None, dtype=None) -> RunningMaxState:
    return RunningMaxState(
        torch.zeros(batch, heads, num_features, head_dim, device=device, dtype=dtype),
        torch.zeros(batch, heads, num_features, device=device, dtype=dtype),
        torch.full((batch, heads), _NEG_INF, device=device, dtype=dtype),
    )


def _exp_diff(a: Tensor, b: Tensor, keep: Tensor) -> Tensor:
    """``exp(a - b)`` where ``keep`` else 0, without evaluating ``-inf - (-inf)``."""
    diff = torch.where(keep, a - torch.where(torch.isfinite(b), b, torch.zeros_like(b)), _NEG_INF)
    return torch.exp(diff)


def running_max_attention(
    phi_q: Tensor, log_phi_k: Tensor, v: Tensor, *, eps: float = 1e-8, chunk_size: int = 128,
    initial_state: RunningMaxState | None = None, return_state: bool = False,
) -> Tensor | tuple[Tensor, RunningMaxState]:
    """Causal linear attention with a running-max key shift; ``(B, H, N, d)`` (and the state)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, H, N, m = phi_q.shape
    d = v.shape[-1]
    state = initial_state or running_max_init_state(B, H, m, d, phi_q.device, phi_q.dtype)
    with torch.no_grad():
        M = torch.cummax(log_phi_k.amax(-1), dim=-1).values  # (B, H, N)
        M = torch.maximum(M, state.M.unsqueeze(-1))
        real = torch.isfinite(M)  # False before the first key
        M_safe = torch.where(real, M, torch.zeros_like(M))
    phi_k = torch.exp(log_phi_k - M_safe.unsqueeze(-1))  # exp(l_j - M_j) <= 1; 0 at padded keys
    vv = torch.cat([v, v.new_ones(B, H, N, 1)], dim=-1)  # the denominator rides along
    Sz = torch.cat([state.S, state.z.unsqueeze(-1)], dim=-1)  # (B, H, m, d + 1)
    R = state.M
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=phi_q.device).tril()
    outs = []
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        q_c, k_c, v_c, M_c, real_c = phi_q[:, :, s:e], phi_k[:, :, s:e], vv[:, :, s:e], M[..., s:e], real[..., s:e]
        c = e - s
        with torch.no_grad():
            # w[i, j] = exp(M_j - M_i) for j <= i (a key seen by then), else 0
            w = _exp_diff(M_c.unsqueeze(-2), M_c.unsqueeze(-1), tril[:c, :c] & real_c.unsqueeze(-2))
            carry = _exp_diff(R.unsqueeze(-1), M_c, torch.isfinite(R).unsqueeze(-1).expand_as(M_c))
            M_end = M_c[..., -1]
            to_end = _exp_diff(M_c, M_end.unsqueeze(-1), real_c)  # exp(M_j - M_end)
            decay = _exp_diff(R, M_end, torch.isfinite(R))
        out = ((q_c @ k_c.transpose(-1, -2)) * w) @ v_c + carry.unsqueeze(-1) * (q_c @ Sz)
        outs.append(out)
        Sz = decay[..., None, None] * Sz + (k_c * to_end.unsqueeze(-1)).transpose(-1, -2) @ v_c
        R = M_end
    out = torch.cat(outs, dim=2)
    y = out[..., :d] / (out[..., d:] + eps)
    if not return_state:
        return y
    return y, RunningMaxState(Sz[..., :d], Sz[..., d], R)


def running_max_attention_step(
    phi_q: Tensor, log_phi_k: Tensor, v: Tensor, state: RunningMaxState, *, eps: float = 1e-8,
) -> tuple[Tensor, RunningMaxState]:
    """One token: ``phi_q, log_phi_k (B, H, m)``, ``v (B, H, d)`` -> ``(B, H, d)`` and the new state."""
    with torch.no_grad():
        M = torch.maximum(state.M, log_phi_k.amax(-1))
        decay = _exp_diff(state.M, M, torch.isfinite(state.M))
    phi_k = torch.exp(log_phi_k - M.unsqueeze(-1))
    S = decay[..., None, None] * state.S + phi_k.unsqueeze(-1) * v.unsqueeze(-2)
    z = decay.unsqueeze(-1) * state.z + phi_k
    num = (phi_q.unsqueeze(-2) @ S).squeeze(-2)
    den = (phi_q * z).sum(-1, keepdim=True)
    return num / (den + eps), RunningMaxState(S, z, M)


def running_max_attention_reference(phi_q: Tensor, log_phi_k: Tensor, v: Tensor, *, eps: float = 1e-8) -> Tensor:
    """The explicit ``O(N^2)`` formula: ``A_ij = phi_q_i . exp(l_j - M_i)`` for ``j <= i``."""
    N = phi_q.shape[-2]
    M = torch.cummax(log_phi_k.amax(-1), dim=-1).values.detach()  # (B, H, N)
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    # (B, H, i, j, m): every visible key's features relative to each query's running max
    tril = torch.ones(N, N, dtype=torch.bool, device=phi_q.device).tril()
    diff = (log_phi_k.unsqueeze(-3) - M[..., :, None, None]).masked_fill(~tril[:, :, None], _NEG_INF)
    A = (phi_q.unsqueeze(-2) * torch.exp(diff)).sum(-1)
    return (A @ v) / (A.sum(-1, keepdim=True) + eps)
