"""Linformer: softmax attention over keys and values projected along the sequence.

Wang et al., "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768.
Keys and values are compressed from ``N`` rows to ``k`` rows (``projected_length``) by
learned projections ``E, F`` of shape ``(max_len, k)`` (parameters ``key_length_proj``,
``value_length_proj``); per head (``d = dim / num_heads``)::

    Q = x W_q,  K = x W_k,  V = x W_v                     (B, H, N, d)
    K~ = E[:N]^T K,  V~ = F[:N]^T V                       (B, H, k, d)
    y = concat_h( softmax(Q K~^T / sqrt(d)) V~ ) W_o      (B, N, D)

Time O(N k d), memory O(N k) per head instead of O(N^2).

Defaults and options: ``projected_length=256`` (the paper's ``k``; its and the reference
code's default),
``max_len=4096`` (rows of ``E``/``F``; longer inputs raise a ``ValueError``,
shorter ones use the first ``N`` rows, as in the reference code), ``share_kv=False``
(``True``: ``F = E``, the paper's key-value sharing; the key and value *linear
maps* stay separate), ``dropout=0.0`` on the attention weights (training only),
``qkv_bias=False`` / ``out_bias=False`` for the linear maps (the reference code: no q/k/v
bias, a biased output map). ``E``/``F`` are initialised ``U(-1/sqrt(k), 1/sqrt(k))`` like the
reference. ``k > N`` is allowed (``k`` projected rows built from ``N`` keys). The instance's
capabilities report its own ``max_len`` (``wersa.capabilities("linformer", max_len=...)``
agrees); the class-level value is the default.

Naive reference: :func:`linformer_reference`, one sequence at a time on its real tokens
only, with explicit loops over heads.

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

from ..ops.heads import compute_dtype, merge_heads, split_heads
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
        projected_length: ``k``, the rows keys and values are projected to.
        max_len: longest accepted sequence (rows of ``E``/``F``).
        share_kv: use one projection for keys and values (``F = E``).
        dropout: dropout on the attention weights (training only).
        qkv_bias: bias in the q/k/v linear maps.
        out_bias: bias in the output map ``out_proj``.
    """

    example_options = (
        {"projected_length": 8, "max_len": 70},
        {"projected_length": 16, "max_len": 128, "share_kv": True},
    )
    capabilities = Capabilities(
        name="linformer", causal=False, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=False, constant_state=False, linear_time=True, max_len=4096,
        summary="Linformer: softmax attention over keys/values projected along the sequence to k rows "
                "(fixed max_len, bidirectional only)",
        reference="Wang et al., Linformer: Self-Attention with Linear Complexity, arXiv 2006.04768",
    )

    renamed_options = {"k": "projected_length", "bias": ("qkv_bias", "out_bias")}
    renamed_parameters = {"proj_k": "key_length_proj", "proj_v": "value_length_proj"}

    @classmethod
    def capabilities_for(cls, causal: bool = False, **options) -> Capabilities:
        # the base class enforces the instance's max_len
        return dataclasses.replace(cls.capabilities, max_len=options.get("max_len", cls.capabilities.max_len))

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *,
                 projected_length: int = 256, max_len: int = 4096, share_kv: bool = False,
                 dropout: float = 0.0, qkv_bias: bool = False, out_bias: bool = False):
        super().__init__(dim, num_heads, causal)
        self.projected_length = _positive_int("projected_length", projected_length)
        max_len = _positive_int("max_len", max_len)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"linformer: dropout must be a float in [0, 1), got {dropout!r}")
        self.capabilities = type(self).capabilities_for(causal=causal, max_len=max_len)
        self.share_kv = bool(share_kv)
        self.dropout_p = float(dropout)
        self.qkv_bias, self.out_bias = bool(qkv_bias), bool(out_bias)
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        k = self.projected_length
        bound = 1.0 / math.sqrt(k)
        self.key_length_proj = nn.Parameter(torch.empty(max_len, k).uniform_(-bound, bound))  # E
        if self.share_kv:
            self.register_parameter("value_length_proj", None)
        else:
            self.value_length_proj = nn.Parameter(torch.empty(max_len, k).uniform_(-bound, bound))  # F
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def length_projections(self, n: int) -> tuple[Tensor, Tensor]:
        """``E[:n], F[:n]``: ``(n, k)`` each (``F = E`` with ``share_kv``)."""
        e = self.key_length_proj[:n]
        return e, (e if self.share_kv else self.value_length_proj[:n])

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: ``(B, N, D)``; mask: ``(B, N)`` bool or None -> ``(B, N, D)``."""
        batch, n, dim = x.shape
        h = self.num_heads
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
        e, f = (p.to(x.dtype) for p in self.length_projections(n))
        keys = torch.einsum("bnc,nk->bkc", keys, e)      # (B, k, D)
        values = torch.einsum("bnc,nk->bkc", values, f)  # (B, k, D)

        q, keys, values = (split_heads(t, h) for t in (q, keys, values))  # (B, H, N|k, d)
        scores = (q @ keys.transpose(-1, -2)) * self.scale                # (B, H, N, k)
        weights = torch.softmax(scores.to(compute_dtype(scores.dtype)), dim=-1)
        if self.training and self.dropout_p > 0:
            weights = F.dropout(weights, p=self.dropout_p)
        out = weights.to(values.dtype) @ values                           # (B, H, N, d)
        return self.out_proj(merge_heads(out))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, projected_length={self.projected_length}, "
                f"max_len={self.capabilities.max_len}, share_kv={self.share_kv}, dropout={self.dropout_p}, "
                f"qkv_bias={self.qkv_bias}, out_bias={self.out_bias}")


def linformer_reference(mixer: LinformerAttention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """The Linformer formula evaluated naively, one sequence and one head at a time.

    Each sequence's real tokens (in order) are taken alone: real token ``i`` meets row ``i``
    of ``E``/``F``, padded positions get 0. ``x``: ``(B, N, D)``; ``mask``: ``(B, N)`` or None.
    Inference form (no dropout).
    """
    batch, n, _ = x.shape
    d = mixer.head_dim
    out = torch.zeros_like(x)
    for b in range(batch):
        real = torch.arange(n) if mask is None else mask[b].nonzero().flatten()
        xs = x[b, real]                                            # (n_b, D)
        e, f = mixer.length_projections(len(real))
        q, keys, values = mixer.q_proj(xs), mixer.k_proj(xs), mixer.v_proj(xs)
        heads = []
        for h in range(mixer.num_heads):
            cols = slice(h * d, (h + 1) * d)
            k_bar = e.T.to(x.dtype) @ keys[:, cols]                # (k, d)
            v_bar = f.T.to(x.dtype) @ values[:, cols]              # (k, d)
            heads.append(torch.softmax(q[:, cols] @ k_bar.T / math.sqrt(d), dim=-1) @ v_bar)
        out[b, real] = mixer.out_proj(torch.cat(heads, dim=-1))
    return out
