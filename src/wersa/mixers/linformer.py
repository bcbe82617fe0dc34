"""Linformer: softmax attention over keys and values projected along the sequence.

Wang et al., "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768.
Keys and values are compressed from ``N`` rows to ``k`` rows by learned
projections ``E, F`` of shape ``(max_len, k)``; per head (``d = dim / num_heads``)::

    Q = x W_q,  K = x W_k,  V = x W_v                     (B, H, N, d)
    K~ = E[:N]^T K,  V~ = F[:N]^T V                       (B, H, k, d)
    y = concat_h( softmax(Q K~^T / sqrt(d)) V~ ) W_o      (B, N, D)

Time O(N k d), memory O(N k) per head instead of O(N^2).

Defaults and options: ``k=256`` (the paper's and the reference code's default),
``max_len=4096`` (rows of ``E``/``F``; longer inputs raise a ``ValueError``,
shorter ones use the first ``N`` rows, as in the reference code), ``share_kv=False``
(``True``: ``F = E``, the paper's key-value sharing; the key and value *linear
maps* stay separate), ``dropout=0.0`` on the attention weights (training only),
``bias=False`` for the four linear maps. ``E``/``F`` are initialised
``U(-1/sqrt(k), 1/sqrt(k))`` like the reference. ``k > N`` is allowed (``k``
projected rows built from ``N`` keys). The instance's ``capabilities.max_len`` is
its own ``max_len``; the class-level value is the default.

No causal form: every projected key mixes all positions, future included, so
``causal=True`` is refused.

Padding. The reference code (lucidrains ``linformer`` 0.2.3) accepts ``mask=``
through ``**kwargs`` and ignores it: padded tokens enter every projected key and
value. Here padded rows of ``K`` and ``V`` are zeroed *before* the projection, so
they contribute nothing to ``K~``/``V~``, and the real tokens are first gathered
to the front in order (stable sort of the mask), so the ``i``-th real token of
every sequence meets row ``i`` of ``E``/``F`` whatever padding precedes it. The
outputs at real positions therefore equal those of the unpadded sequence for
right and left padding. (All ``k`` projected rows remain valid keys: there is
nothing left to mask after the projection.)

Half-precision inputs: scores are normalised in float32.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Capabilities, Mixer
from .registry import register_mixer


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"linformer: {name} must be a positive integer, got {value!r}")
    return value


@register_mixer
class LinformerAttention(Mixer):
    """Linformer self-attention with sequence projections ``E, F: (max_len, k)``.

    Args:
        dim: model width ``D``.
        num_heads: heads ``H`` (``D % H == 0``).
        causal: must be False (no causal form).
        k: projected length.
        max_len: longest accepted sequence (rows of ``E``/``F``).
        share_kv: use one projection for keys and values (``F = E``).
        dropout: dropout on the attention weights (training only).
        bias: bias in the q/k/v/out linear maps.
    """

    capabilities = Capabilities(
        name="linformer",
        causal=False,
        bidirectional=True,
        attention_mask=True,
        left_padding=True,
        recurrent=False,
        constant_state=False,
        linear_time=True,
        max_len=4096,
        summary="Linformer: softmax attention over keys/values projected along the sequence to k rows "
                "(fixed max_len, bidirectional only)",
        reference="Wang et al., Linformer: Self-Attention with Linear Complexity, arXiv 2006.04768",
    )

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *,
                 k: int = 256, max_len: int = 4096, share_kv: bool = False,
                 dropout: float = 0.0, bias: bool = False):
        super().__init__(dim, num_heads, causal)
        self.k = _positive_int("k", k)
        max_len = _positive_int("max_len", max_len)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"linformer: dropout must be a float in [0, 1), got {dropout!r}")
        # per-instance capabilities: the base class enforces self.capabilities.max_len
        self.capabilities = dataclasses.replace(type(self).capabilities, max_len=max_len)
        self.share_kv = bool(share_kv)
        self.dropout_p = float(dropout)
        self.bias = bool(bias)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        bound = 1.0 / math.sqrt(self.k)
        self.proj_k = nn.Parameter(torch.empty(max_len, self.k).uniform_(-bound, bound))  # E
        if self.share_kv:
            self.register_parameter("proj_v", None)
        else:
            self.proj_v = nn.Parameter(torch.empty(max_len, self.k).uniform_(-bound, bound))  # F
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: ``(B, N, D)``; mask: ``(B, N)`` bool or None -> ``(B, N, D)``."""
        batch, n, dim = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(x)
        keys = self.k_proj(x)
        values = self.v_proj(x)
        if mask is not None:
            # exclude padded tokens from the projection, then pack real tokens to the
            # front so that real token i always meets projection row i
            keep = mask.unsqueeze(-1).to(keys.dtype)
            order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
            idx = order.unsqueeze(-1).expand(batch, n, dim)
            keys = (keys * keep).gather(1, idx)
            values = (values * keep).gather(1, idx)
        e = self.proj_k[:n].to(x.dtype)
        f = e if self.share_kv else self.proj_v[:n].to(x.dtype)
        keys = torch.einsum("bnc,nk->bkc", keys, e)      # (B, k, D)
        values = torch.einsum("bnc,nk->bkc", values, f)  # (B, k, D)

        q = q.view(batch, n, h, d).transpose(1, 2)                 # (B, H, N, d)
        keys = keys.view(batch, self.k, h, d).transpose(1, 2)      # (B, H, k, d)
        values = values.view(batch, self.k, h, d).transpose(1, 2)  # (B, H, k, d)
        scores = (q @ keys.transpose(-1, -2)) * self.scale          # (B, H, N, k)
        work = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
        weights = torch.softmax(scores.to(work), dim=-1)
        if self.training and self.dropout_p > 0:
            weights = F.dropout(weights, p=self.dropout_p)
        out = weights.to(values.dtype) @ values                     # (B, H, N, d)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n, dim))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, k={self.k}, max_len={self.capabilities.max_len}, "
                f"share_kv={self.share_kv}, dropout={self.dropout_p}, bias={self.bias}")
