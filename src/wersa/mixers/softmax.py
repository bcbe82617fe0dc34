"""Vanilla multi-head softmax attention that materialises the ``N x N`` scores.

This is the paper's "MHA" baseline (Vaswani et al., "Attention Is All You Need",
arXiv 1706.03762): the explicit, quadratic reference whose score matrix is what
runs out of memory first on long sequences. The fused kernel lives in the
``sdpa`` mixer; this one deliberately keeps the explicit form.

Math, per head ``h`` with ``d = dim / num_heads``::

    Q = x W_q,  K = x W_k,  V = x W_v                     (B, H, N, d)
    S = Q K^T / sqrt(d)                                    (B, H, N, N)
    S[i, j] = -inf  where key j is padded, or j > i (causal)
    A = softmax(S, dim=-1), then dropout(A) while training
    y = concat_h(A V) W_o                                  (B, N, D)

Masking and alignment:

* ``attention_mask`` excludes padded keys from the scores and the normaliser,
  so outputs at real positions are those of the unpadded sequence, for right
  *and* left padding (the mixer has no positional terms, so shifting the real
  tokens does not change their outputs).
* causal alignment is bottom-right (one convention for the whole library): with
  ``M >= N`` keys, query ``i`` sees keys ``j <= i + M - N``, so a decoding query
  sees every cached key.
* a query whose every key is masked (a padded query in a left-padded causal
  batch, an all-padding row) would give ``softmax`` of all ``-inf`` = NaN, and a
  NaN times the zero the base class applies is still NaN (and so are its
  gradients). Scores are therefore filled with the most negative *finite* float
  and the weights multiplied by the allowed mask: such rows give exactly 0 with
  finite gradients, while rows with an allowed key are unchanged
  (``exp(min - max)`` underflows to exactly 0).
* the softmax is computed in float32 for half-precision inputs.

Decoding: the state is a KV cache ``{"k": (B, H, T, d), "v": (B, H, T, d),
"valid": (B, T) bool}`` that grows by one key per ``step`` (``constant_state``
is False). A padded ``step`` (``attention_mask`` entry False) still appends its
key, marked invalid, so every sequence in the batch keeps the same cache length
and later queries never see it. :meth:`prefill` fills the cache from a prompt in
one parallel pass.

Options: ``dropout=0.0`` (on the attention weights, training only),
``qkv_bias=False`` (bias of the q/k/v projections), ``out_bias=False`` (of ``out_proj``).
Cost: O(N^2 d) time and O(H N^2) memory per batch element.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.heads import compute_dtype, merge_heads, split_heads
from ..ops.softmax_attention import attention_bias
from .base import Capabilities, Mixer
from .registry import register_mixer


@register_mixer
class SoftmaxAttention(Mixer):
    """Exact multi-head softmax attention with an explicit ``(B, H, N, N)`` score matrix.

    Args:
        dim: model width ``D``.
        num_heads: heads ``H`` (``D % H == 0``).
        causal: autoregressive form (bottom-right aligned).
        dropout: dropout probability on the attention weights (training only).
        qkv_bias: bias in the q/k/v projections.
        out_bias: bias in the output projection.
    """

    capabilities = Capabilities(
        name="softmax", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=False, linear_time=False,
        summary="exact multi-head softmax attention materialising the N x N scores (MHA)",
        reference="Vaswani et al., Attention Is All You Need, arXiv 1706.03762",
    )

    renamed_options = {"bias": ("qkv_bias", "out_bias")}

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *,
                 dropout: float = 0.0, qkv_bias: bool = False, out_bias: bool = False):
        super().__init__(dim, num_heads, causal)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"softmax: dropout must be a float in [0, 1), got {dropout!r}")
        self.dropout_p = float(dropout)
        self.qkv_bias, self.out_bias = bool(qkv_bias), bool(out_bias)
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    # ----------------------------------------------------------------- helpers
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool,
                key_mask: Tensor | None) -> Tensor:
        """Masked softmax attention. q: ``(B, H, N, d)``; k, v: ``(B, H, M, d)``;
        key_mask: ``(B, M)`` bool or None. Returns ``(B, N, D)`` before ``out_proj``.
        """
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, N, M)
        # half precision: exponentiate and normalise in float32
        work = compute_dtype(scores.dtype)
        scores = scores.to(work)
        allowed = attention_bias(q.shape[-2], k.shape[-2], causal=causal, key_mask=key_mask,
                                 device=q.device, dtype=work)
        if allowed is not None:
            # finite fill (not -inf) so fully masked rows give 0 rather than NaN
            scores = scores.masked_fill(~allowed, torch.finfo(work).min)
        weights = torch.softmax(scores, dim=-1)
        if allowed is not None:
            weights = weights * allowed.to(work)
        if self.training and self.dropout_p > 0:
            weights = F.dropout(weights, p=self.dropout_p)
        return merge_heads(weights.to(v.dtype) @ v)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D) -> 3 x (B, H, N, d)``."""
        h = self.num_heads
        return split_heads(self.q_proj(x), h), split_heads(self.k_proj(x), h), split_heads(self.v_proj(x), h)

    # ----------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: ``(B, N, D)``; mask: ``(B, N)`` bool or None -> ``(B, N, D)``."""
        q, k, v = self._qkv(x)
        return self.out_proj(self._attend(q, k, v, causal=self.causal, key_mask=mask))

    # --------------------------------------------------------------- recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        shape = (batch_size, self.num_heads, 0, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "valid": torch.zeros(batch_size, 0, device=device, dtype=torch.bool),
        }

    def _check_state(self, state: Any, batch: int) -> None:
        if not (isinstance(state, dict) and {"k", "v", "valid"} <= set(state)):
            raise ValueError("softmax: state must be the dict returned by init_state() or prefill()")
        if state["k"].shape[0] != batch:
            raise ValueError(
                f"softmax: state holds {state['k'].shape[0]} sequences but x_t has batch {batch}"
            )

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x_t: ``(B, D)`` -> ``(B, D)``; appends this token's key/value to the cache."""
        self._check_state(state, x_t.shape[0])
        q, k, v = self._qkv(x_t.unsqueeze(1))  # (B, H, 1, d)
        keys = torch.cat([state["k"], k], dim=2)
        values = torch.cat([state["v"], v], dim=2)
        valid = torch.cat([state["valid"], state["valid"].new_ones(x_t.shape[0], 1)], dim=1)
        # bottom-right alignment: the newest query sees every cached key, so only
        # the validity mask applies
        y = self.out_proj(self._attend(q, keys, values, causal=False, key_mask=valid))
        return y[:, 0], {"k": keys, "v": values, "valid": valid}

    def _select_state(self, keep: Tensor, new: Any, old: Any) -> Any:
        """A padded step keeps the appended key but marks it invalid (caches stay aligned)."""
        valid = new["valid"].clone()
        valid[:, -1] = valid[:, -1] & keep
        return {"k": new["k"], "v": new["v"], "valid": valid}

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """One parallel causal pass over a prompt; returns outputs and the KV cache."""
        q, k, v = self._qkv(x)
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
        y = self.out_proj(self._attend(q, k, v, causal=True, key_mask=mask))
        return y, {"k": k, "v": v, "valid": valid}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout_p}, qkv_bias={self.qkv_bias}, out_bias={self.out_bias}"
