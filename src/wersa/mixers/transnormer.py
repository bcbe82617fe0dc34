"""TransNormer: NormAttention (global, linear) and DiagAttention (block-local).

Reference: Qin et al., "The Devil in Linear Transformer", EMNLP 2022,
arXiv 2210.10340; math lifted from ``OpenNLPLab/fairseq-evo``
(``fairseq/modules/x_attention/norm_linear_attention.py`` and
``norm_local_attention.py``).

One mixer name, ``transnormer``, with ``attention="norm"`` (default) or
``attention="diag"``. The paper's model puts Diag in the first half of the layers
and Norm in the second; :func:`transnormer_layer_options` returns that layout as
per-layer option dicts, and a model (``WersaConfig(mixer="transnormer")``) uses it
unless ``attention`` is given in ``mixer_options`` or per layer.

NormAttention (per head, ``d = D / H``; no ``1/sqrt(d)``, no denominator)::

    q, k, v = x W_q + b, x W_k + b, x W_v + b            (B, H, N, d)
    bidirectional: o_i = phi(q_i)^T  sum_j      phi(k_j) v_j^T
    causal:        o_i = phi(q_i)^T  sum_{j<=i} phi(k_j) v_j^T
    o = SimpleRMSNorm(concat_h o)   over ALL D channels (heads jointly)
    y = o W_out + b
    SimpleRMSNorm(u) = u / (||u||_2 * D^{-1/2} + 1e-8)   (no gain)

The norm's scope is the whole width ``D`` of each token (all heads together), as
in the reference (``norm_linear_attention.py`` normalises after merging heads);
``tests/mixers/test_transnormer.py`` checks it against a per-head norm.

DiagAttention (non-overlapping windows of ``window_size = w`` tokens, default 64 as
in the paper's ``decoder_chunk_size``)::

    s_ij = q_i . k_j / sqrt(d)     for i, j in the same block (causal: j <= i)
    T2 (variant="t2"): o_i = sum_j softmax_j(s_ij) v_j                (no output norm)
    T1 (variant="t1"): o_i = sum_j relu(s_ij) v_j, no row normalisation,
                       then SimpleRMSNorm over D (as in the reference, T1 only)
    y = o W_out + b

``variant`` also picks the feature map of NormAttention: ``t1`` = ELU (signed,
fine without a denominator), ``t2`` = ``1 + ELU`` (default, as ``transnormer_t2``).

Pitfalls of the reference code and how this file avoids them:

* the reference causal NormAttention builds the ``N x N`` matrix ``q k^T`` and
  zeroes its upper triangle (``O(N^2)``); here the causal form is the chunked
  prefix sum of :func:`wersa.ops.linear_attention.causal_linear_attention`
  (``normalize=False``): ``O(N c d + N d^2)``, and the decoding state is the
  ``d x d`` sum per head.
* DiagAttention pads ``N`` to a multiple of ``w`` with zeros; a zero key has
  score 0 and would receive softmax weight (and shift T1 sums) unless masked.
  Here every key beyond the real length of its row is masked, so padding to the
  block multiple never changes valid outputs.
* with an ``attention_mask``, padded tokens are removed before blocking (the real
  tokens are compacted to the front, :mod:`wersa.ops.compaction`), so block
  boundaries are those of the unpadded sequence for right, left or inner
  padding. NormAttention has no positional structure: it zeroes the features of
  padded keys, which is exact for any padding pattern.

Decoding (``causal=True``): Norm keeps ``{"S": (B, H, d, d), "z": (B, H, d)}``;
Diag keeps a rolling buffer of the current block's keys and values
``{"k", "v": (B, H, w, d), "pos": (B,)}`` (slot ``pos % w``; slots above it are
stale and masked). Both are constant in size.

Options: ``attention="norm"``, ``variant="t2"``, ``window_size=64`` (Diag),
``chunk_size=64`` (chunk of the causal Norm prefix sums; any value gives the same
result), ``qkv_bias=True`` / ``out_bias=True`` (projections, as the reference).
Cost: Norm ``O(N H d^2)``; Diag ``O(N w D)`` time, ``O(B H N w)`` memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.compaction import compaction, gather_tokens
from ..ops.heads import compute_dtype
from ..ops.linear_attention import (
    LinearAttentionState,
    causal_linear_attention,
    linear_attention,
    linear_attention_step,
)
from .base import Capabilities, Mixer
from .registry import register_mixer

_VARIANTS = ("t1", "t2")
_ATTENTIONS = ("norm", "diag")


def simple_rms_norm(u: Tensor, eps: float = 1e-8) -> Tensor:
    """``u / (||u||_2 * E^{-1/2} + eps)`` over the last axis (width ``E``), no gain."""
    scale = u.shape[-1] ** -0.5
    return u / (torch.linalg.vector_norm(u, dim=-1, keepdim=True) * scale + eps)


def norm_feature_map(x: Tensor, variant: str) -> Tensor:
    """``phi`` of NormAttention: ELU (T1) or ``1 + ELU`` (T2)."""
    return F.elu(x) if variant == "t1" else 1.0 + F.elu(x)


def diag_attention(
    q: Tensor, k: Tensor, v: Tensor, window_size: int, *, causal: bool, softmax: bool,
    lengths: Tensor | None = None,
) -> Tensor:
    """Block-local attention over non-overlapping blocks of ``window_size`` tokens.

    Args:
        q, k, v: ``(B, H, N, d)``; queries are scaled here by ``d^{-1/2}``.
        causal: mask ``j > i`` inside each block.
        softmax: T2 (softmax weights) if True, else T1 (``relu`` scores, no normalisation).
        lengths: ``(B,)`` real tokens per row (the first ``lengths[b]`` positions are
            real, the rest padding); ``None`` = all ``N`` real.
    Returns:
        ``(B, H, N, d)``. Rows at padded positions hold finite values to be discarded.
    """
    B, H, N, d = q.shape
    w = window_size
    pad = (-N) % w
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n_blocks = (N + pad) // w
    pos = torch.arange(N + pad, device=q.device)
    limit = torch.full((B,), N, device=q.device) if lengths is None else lengths
    real = pos[None, :] < limit[:, None]  # (B, Np): the zero padding to a block multiple is not real
    qb = q.reshape(B, H, n_blocks, w, d) * (d ** -0.5)
    kb = k.reshape(B, H, n_blocks, w, d)
    vb = v.reshape(B, H, n_blocks, w, d)
    scores = qb @ kb.transpose(-1, -2)  # (B, H, nb, w, w)
    realb = real.view(B, 1, n_blocks, w)
    allowed = realb.unsqueeze(-2)  # key real
    if causal:
        allowed = allowed & torch.ones(w, w, dtype=torch.bool, device=q.device).tril()
    # Padded queries may see every key of their block: their outputs are discarded,
    # and a row with no allowed key would make a NaN softmax (and NaN gradients).
    allowed = allowed | ~realb.unsqueeze(-1)
    if softmax:
        s = scores.to(compute_dtype(scores.dtype))
        weights = s.masked_fill(~allowed, float("-inf")).softmax(dim=-1).to(vb.dtype)
    else:
        weights = torch.relu(scores) * allowed.to(scores.dtype)
    out = (weights @ vb).reshape(B, H, N + pad, d)
    return out[:, :, :N]


def diag_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, window_size: int, *, causal: bool, softmax: bool,
) -> Tensor:
    """Dense ``O(N^2)`` form of :func:`diag_attention`: full scores with a block-diagonal mask."""
    N, d = q.shape[-2], q.shape[-1]
    blk = torch.arange(N, device=q.device) // window_size
    allowed = blk[:, None] == blk[None, :]
    if causal:
        allowed = allowed & torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    if softmax:
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    else:
        weights = torch.relu(scores) * allowed.to(scores.dtype)
    return weights @ v


def transnormer_layer_options(num_layers: int, **common: Any) -> list[dict[str, Any]]:
    """Per-layer options of the paper's layout: Diag in the first ``num_layers // 2``
    layers, Norm in the rest (``decoder_attention_types = [2]*(L/2) + [1]*(L/2)``).

    ``common`` options (``variant``, ``window_size``, ...) are added to every layer.
    """
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"transnormer: num_layers must be a positive integer, got {num_layers!r}")
    n_diag = num_layers // 2
    return [dict(common, attention="diag" if i < n_diag else "norm") for i in range(num_layers)]


@register_mixer
class TransNormer(Mixer):
    """TransNormer attention: ``attention="norm"`` (NormAttention) or ``"diag"`` (DiagAttention).

    Args:
        dim: model width ``D``.
        num_heads: heads ``H``.
        causal: autoregressive form.
        attention: ``"norm"`` (global linear attention with output RMS norm) or
            ``"diag"`` (block-local attention).
        variant: ``"t2"`` (``1+elu`` features, softmax blocks) or ``"t1"`` (ELU
            features, ReLU blocks with an output RMS norm).
        window_size: Diag block length ``w`` (keys per block, itself included).
        chunk_size: chunk length of the causal Norm prefix sums (speed only).
        qkv_bias, out_bias: biases of the q/k/v and output projections.
    """

    example_options = (
        {"attention": "diag", "window_size": 8, "chunk_size": 8},
        {"attention": "norm", "chunk_size": 4, "window_size": 4},
    )
    capabilities = Capabilities(
        name="transnormer", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="TransNormer NormAttention (linear, output RMS norm) / DiagAttention (block-local)",
        reference="Qin et al., The Devil in Linear Transformer, EMNLP 2022, arXiv 2210.10340",
    )

    renamed_options = {"block_size": "window_size", "bias": ("qkv_bias", "out_bias")}

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        attention: str = "norm", variant: str = "t2", window_size: int = 64,
        chunk_size: int = 64, qkv_bias: bool = True, out_bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal)
        if attention not in _ATTENTIONS:
            raise ValueError(f"transnormer: attention must be one of {_ATTENTIONS}, got {attention!r}")
        if variant not in _VARIANTS:
            raise ValueError(f"transnormer: variant must be one of {_VARIANTS}, got {variant!r}")
        for name, val in (("window_size", window_size), ("chunk_size", chunk_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"transnormer: {name} must be a positive integer, got {val!r}")
        self.attention = attention
        self.variant = variant
        self.window_size = window_size
        self.chunk_size = chunk_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)

    # -------------------------------------------------------------- helpers
    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D) -> 3 x (B, H, N, d)``."""
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _output(self, o: Tensor) -> Tensor:
        """Merge heads ``(B, H, N, d) -> (B, N, D)``, normalise where the variant says, project."""
        B, H, N, d = o.shape
        o = o.transpose(1, 2).reshape(B, N, H * d)
        if self.attention == "norm" or self.variant == "t1":
            o = simple_rms_norm(o)
        return self.out_proj(o)

    # -------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.attention == "norm":
            q, k, v = self._heads(x)
            fq, fk = norm_feature_map(q, self.variant), norm_feature_map(k, self.variant)
            if self.causal:
                o = causal_linear_attention(fq, fk, v, key_mask=mask, normalize=False,
                                            chunk_size=self.chunk_size)
            else:
                o = linear_attention(fq, fk, v, key_mask=mask, normalize=False)
            return self._output(o)
        # Diag: blocks are positional, so padded tokens are compacted away first.
        comp = None
        if mask is not None:
            comp = compaction(mask)
            x = gather_tokens(x, comp.perm)
        q, k, v = self._heads(x)
        o = diag_attention(q, k, v, self.window_size, causal=self.causal,
                           softmax=self.variant == "t2",
                           lengths=None if comp is None else comp.lengths)
        y = self._output(o)
        return y if comp is None else gather_tokens(y, comp.inverse)

    # ------------------------------------------------------------ recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        H, d = self.num_heads, self.head_dim
        if self.attention == "norm":
            return {"S": torch.zeros(batch_size, H, d, d, device=device, dtype=dtype),
                    "z": torch.zeros(batch_size, H, d, device=device, dtype=dtype)}
        w = self.window_size
        return {"k": torch.zeros(batch_size, H, w, d, device=device, dtype=dtype),
                "v": torch.zeros(batch_size, H, w, d, device=device, dtype=dtype),
                "pos": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = (t[:, :, 0] for t in self._heads(x_t.unsqueeze(1)))  # (B, H, d)
        if self.attention == "norm":
            fq, fk = norm_feature_map(q, self.variant), norm_feature_map(k, self.variant)
            o, st = linear_attention_step(fq, fk, v, LinearAttentionState(state["S"], state["z"]),
                                          normalize=False)
            return self._output(o.unsqueeze(2))[:, 0], {"S": st.S, "z": st.z}
        w = self.window_size
        slot = state["pos"] % w  # (B,)
        ar = torch.arange(w, device=x_t.device)
        write = (ar[None, :] == slot[:, None]).view(-1, 1, w, 1)
        kb = torch.where(write, k.unsqueeze(2), state["k"])
        vb = torch.where(write, v.unsqueeze(2), state["v"])
        valid = (ar[None, :] <= slot[:, None]).view(-1, 1, w)  # slots of the current block
        scores = torch.einsum("bhd,bhwd->bhw", q * (self.head_dim ** -0.5), kb)
        if self.variant == "t2":
            s = scores.to(compute_dtype(scores.dtype))
            weights = s.masked_fill(~valid, float("-inf")).softmax(-1).to(vb.dtype)
        else:
            weights = torch.relu(scores) * valid.to(scores.dtype)
        o = torch.einsum("bhw,bhwd->bhd", weights, vb)
        return self._output(o.unsqueeze(2))[:, 0], {"k": kb, "v": vb, "pos": state["pos"] + 1}

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Any]:
        """Norm: chunked prefix sums. Diag (a rolling window) steps token by token."""
        if self.attention == "diag":
            return self.step_through(x, attention_mask=mask)
        q, k, v = self._heads(x)
        fq, fk = norm_feature_map(q, self.variant), norm_feature_map(k, self.variant)
        o, st = causal_linear_attention(fq, fk, v, key_mask=mask, normalize=False,
                                        chunk_size=self.chunk_size, return_state=True)
        return self._output(o), {"S": st.S, "z": st.z}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, attention={self.attention!r}, variant={self.variant!r}, "
                f"window_size={self.window_size}")
