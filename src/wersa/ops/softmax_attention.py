"""Exact softmax attention: the naive reference and the log-sum-exp merge.

:func:`softmax_attention_reference` materialises the ``N x M`` score matrix; it is
the oracle the exact mixers (``softmax``, ``sdpa``) and the approximations
(HyperAttention, random features) are compared with. Causal alignment is
bottom-right: with ``M >= N`` keys, query ``i`` sees keys ``j <= i + (M - N)`` (the
newest query sees every cached key), the one convention of the whole library.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_bias(
    n_queries: int, n_keys: int, *, causal: bool, key_mask: Tensor | None,
    device, dtype,
) -> Tensor | None:
    """Boolean ``(B or 1, 1, N, M)`` mask of allowed (query, key) pairs, or ``None``."""
    allowed = None
    if causal:
        offset = n_keys - n_queries
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=offset)
        allowed = allowed[None, None]
    if key_mask is not None:
        km = key_mask[:, None, None, :].to(torch.bool)
        allowed = km if allowed is None else allowed & km
    return allowed


def softmax_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, key_mask: Tensor | None = None,
    scale: float | None = None, return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``softmax(q k^T * scale) v`` with masks. Rows with no allowed key give 0.

    Args:
        q: ``(B, H, N, d)``; k, v: ``(B, H, M, d)``; key_mask: ``(B, M)`` bool.
        scale: defaults to ``1 / sqrt(d)``.
    Returns:
        ``(B, H, N, d)`` (and the log-sum-exp ``(B, H, N)``, ``-inf`` for empty rows).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    allowed = attention_bias(q.shape[-2], k.shape[-2], causal=causal, key_mask=key_mask,
                             device=q.device, dtype=q.dtype)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    # exp(-inf - finite) = 0; guard rows where every key is masked (lse = -inf).
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    weights = torch.exp(scores - safe_lse.unsqueeze(-1))
    out = weights @ v
    return (out, lse) if return_lse else out


def merge_attention(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Combine attention over two disjoint key sets from their outputs and log-sum-exps.

    ``out = (e^{lse1} out1 + e^{lse2} out2) / (e^{lse1} + e^{lse2})``; shapes
    ``(..., N, d)`` and ``(..., N)``. Empty sets (``lse = -inf``) are handled.
    """
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w1 = torch.exp(lse1 - safe).unsqueeze(-1)
    w2 = torch.exp(lse2 - safe).unsqueeze(-1)
    return w1 * out1 + w2 * out2, lse
