"""L2ViT: enhanced linear attention plus the local concentration module (LCM).

Reference: Chuanyang Zheng, "The Linear Attention Resurrection in Vision
Transformer", arXiv 2501.16182; code ``ChuanyangZheng/L2ViT``,
``classification/models/l2vit.py`` (``LinearAttention``, ``LCM``).

Enhanced linear attention, per head (``d = D / H``)::

    q, k, v = x W_q + b, x W_k + b, x W_v + b            (B, H, N, d)
    q, k = relu(q), relu(k)
    KV = tau_h * sum_j k_j v_j^T        tau_h learnable per head, init d^{-1/2} (scales KV, not k)
    a_i = q_i^T KV / clamp(q_i . sum_j k_j, min=clamp_min)
    a = concat_h(a) W_proj + b                                           (B, N, D)

Equivalent quadratic form (what the tests compare with)::

    A = relu(Q) relu(K)^T;  a = tau (A V) / clamp(rowsum(A), clamp_min)

Local concentration module (LCM). The paper's block is two residual branches,
``x1 = x + LA(LN1 x)``, ``x2 = x1 + LCM(LN2 x1)``, with
``LCM(u) = DWConv_k(BatchNorm(GELU(DWConv_k(u))))`` (depthwise, ``k = 7``). A mixer only
sees ``u = LN1 x`` and returns one update, so the LCM branch is applied to the stream
after attention as the mixer can see it::

    a = LA(u)
    y = a + LCM(LN2(u + a))          lcm_input="stream" (default; the paper has LN2(x + a))
    y = a + LCM(LN2(a))              lcm_input="attention" (0.1.0)

``lcm_norm``: ``"batch"`` (the paper's BatchNorm, default when bidirectional) or
``"layer"`` (a per-token LayerNorm over channels; 0.1.0, and the default when causal).
BatchNorm's statistics are computed over the *real* tokens of the batch only, so
padding never enters them. In training mode BatchNorm couples the rows of a batch
and every position of a sequence (a token's output depends on later tokens through
the statistics), so ``lcm_norm="batch"`` has no causal form and is refused with
``causal=True``; in eval mode (running statistics) it is a per-channel affine map.
Training needs more than one real token per batch (BatchNorm's own limit).

Sequences use 1-D depthwise convolutions (a project adaptation; the paper is 2-D);
``image_size=(Hh, Ww)`` uses the paper's 2-D ``k x k`` convolutions on a
``(B, Hh*Ww, D)`` row-major input.

Deviations from the reference that remain, and why:

* ``clamp(min=100)`` is scale dependent (for a small width or a short sequence the
  denominator is almost always 100 and the "attention" is an unnormalised
  ``q KV / 100``), so ``clamp_min`` is an option; bidirectional default: the paper's 100.
* the LCM sees ``LN2(u + a)`` with ``u = LN1 x`` in place of ``LN2(x + a)`` (above).

Causal form (a project adaptation, not in the paper): prefix sums for ``sum k v^T``
and ``sum k`` (chunked, :func:`wersa.ops.linear_attention.causal_linear_attention`
with ``normalize=False`` for the numerator, a cumulative sum of ``k`` for the
denominator) and left-padded (causal) convolutions of any kernel size. The paper's
clamp of 100 assumes a sum over all ``H W`` keys; a causal token ``i`` sums ``i + 1``
keys, so that clamp would shrink early outputs towards 0. Causal default:
``clamp_min=1e-6``, which only guards a zero denominator. Decoding keeps
``{"S": (B, H, d, d), "z": (B, H, d), "c1", "c2": (B, D, k-1)}``: the linear
attention sums and the last ``k - 1`` inputs of each convolution; constant size.

Padding (1-D): padded keys are removed from both sums; for the convolutions the real
tokens are compacted to the front (:mod:`wersa.ops.compaction`) and the positions
beyond the real length are zero before each convolution, exactly the zero padding
of the unpadded sequence. This holds for right, left and inner padding. The 2-D
form takes no padding mask.

Options: ``clamp_min`` (100 bidirectional, 1e-6 causal), ``lcm=True``, ``conv_size=7``
(odd when bidirectional), ``lcm_norm`` (``"batch"`` bidirectional, ``"layer"`` causal),
``lcm_input="stream"``, ``image_size=None``, ``chunk_size=64`` (causal prefix sums;
speed only), ``qkv_bias=True`` and ``out_bias=True``.
Cost: attention ``O(N H d^2)``; LCM ``O(N D k)`` (``O(N D k^2)`` in 2-D).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.compaction import compaction, gather_tokens
from ..ops.heads import compute_dtype
from ..ops.linear_attention import causal_linear_attention
from .base import Capabilities, Mixer
from .registry import register_mixer


def l2vit_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, tau: Tensor, clamp_min: float, *, causal: bool,
    key_mask: Tensor | None = None, chunk_size: int = 64,
) -> Tensor:
    """Linear form. ``q, k``: ``(B, H, N, d)`` after ReLU; ``v``: ``(B, H, N, d)``;
    ``tau``: ``(H,)``; ``key_mask``: ``(B, N)`` bool or ``None``. Returns ``(B, H, N, d)``."""
    if key_mask is not None:
        k = k * key_mask[:, None, :, None].to(k.dtype)
    t = tau.view(1, -1, 1, 1).to(q.dtype)
    if causal:
        num = causal_linear_attention(q, k, v, normalize=False, chunk_size=chunk_size)
        # A bf16 running sum over a long sequence loses most of its mantissa; sum in fp32.
        acc = compute_dtype(q.dtype)
        den = (q.to(acc) * torch.cumsum(k, dim=2, dtype=acc)).sum(-1, keepdim=True).to(q.dtype)
    else:
        num = q @ (k.transpose(-1, -2) @ v)
        den = q @ k.sum(dim=2, keepdim=True).transpose(-1, -2)
    return num * t / den.clamp(min=clamp_min)


def l2vit_linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, tau: Tensor, clamp_min: float, *, causal: bool,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Quadratic form: ``A = q k^T`` (masked), ``tau (A v) / clamp(rowsum A, clamp_min)``."""
    A = q @ k.transpose(-1, -2)
    N = A.shape[-1]
    if causal:
        A = A * torch.ones(N, N, dtype=A.dtype, device=A.device).tril()
    if key_mask is not None:
        A = A * key_mask[:, None, None, :].to(A.dtype)
    return tau.view(1, -1, 1, 1) * (A @ v) / A.sum(-1, keepdim=True).clamp(min=clamp_min)


LCM_NORMS = ("batch", "layer")
LCM_INPUTS = ("stream", "attention")


@register_mixer
class L2ViTAttention(Mixer):
    """L2ViT enhanced linear attention with the local concentration module.

    Args:
        dim: model width ``D``.
        num_heads: heads ``H``.
        causal: prefix-sum attention and causal convolutions (project adaptation).
        clamp_min: lower clamp of the attention denominator (default: the paper's 100
            bidirectional, 1e-6 causal).
        lcm: add the local concentration module.
        conv_size: depthwise convolution kernel ``k`` (per axis in 2-D).
        lcm_norm: ``"batch"`` (paper; default bidirectional) or ``"layer"`` (default causal).
        lcm_input: ``"stream"`` (LCM on ``LN(u + a)``, default) or ``"attention"`` (on ``LN(a)``).
        image_size: ``(H, W)`` for a 2-D input ``(B, H*W, D)`` (2-D convolutions).
        chunk_size: chunk length of the causal prefix sums (speed only).
        qkv_bias, out_bias: biases of the q/k/v and output projections.
    """

    example_options = (
        {"chunk_size": 4, "conv_size": 3, "lcm_norm": "layer"}, {"lcm": False, "chunk_size": 16},
        {"lcm_input": "attention", "clamp_min": 1.0},
    )
    capabilities = Capabilities(
        name="l2vit", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="L2ViT ReLU linear attention (clamped denominator) + depthwise-conv local concentration "
                "(BatchNorm; LayerNorm when causal)",
        reference="Zheng, The Linear Attention Resurrection in Vision Transformer, arXiv 2501.16182",
    )
    renamed_options = {"lcm_kernel_size": "conv_size", "bias": ("qkv_bias", "out_bias")}
    renamed_parameters = {"proj.": "out_proj."}

    @classmethod
    def capabilities_for(cls, causal: bool = False, **options) -> Capabilities:
        # lcm_norm=None is BatchNorm when bidirectional and LayerNorm when causal: both forms exist.
        if options.get("lcm", True) and options.get("lcm_norm") == "batch":
            # Batch statistics in training mode see every position: no causal / recurrent form.
            return dataclasses.replace(cls.capabilities, causal=False, recurrent=False, constant_state=False)
        return cls.capabilities

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        clamp_min: float | None = None, lcm: bool = True, conv_size: int = 7,
        lcm_norm: str | None = None, lcm_input: str = "stream",
        image_size: tuple[int, int] | None = None, chunk_size: int = 64,
        qkv_bias: bool = True, out_bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal)
        if clamp_min is None:
            clamp_min = 1e-6 if causal else 100.0
        if not isinstance(clamp_min, (int, float)) or isinstance(clamp_min, bool) or not clamp_min > 0:
            raise ValueError(f"l2vit: clamp_min must be a positive number, got {clamp_min!r}")
        for name, val in (("conv_size", conv_size), ("chunk_size", chunk_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"l2vit: {name} must be a positive integer, got {val!r}")
        self.capabilities = type(self).capabilities_for(causal=causal, lcm=lcm, lcm_norm=lcm_norm)
        if lcm_norm is None:
            lcm_norm = "layer" if causal else "batch"
        if lcm_norm not in LCM_NORMS:
            raise ValueError(f"l2vit: lcm_norm must be one of {LCM_NORMS}, got {lcm_norm!r}")
        if lcm_input not in LCM_INPUTS:
            raise ValueError(f"l2vit: lcm_input must be one of {LCM_INPUTS}, got {lcm_input!r}")
        if lcm and causal and lcm_norm == "batch":
            raise ValueError("l2vit: lcm_norm='batch' has no causal form (in training, batch statistics "
                             "include later tokens); use lcm_norm='layer' with causal=True")
        if lcm and not causal and conv_size % 2 == 0:
            raise ValueError(f"l2vit: a bidirectional LCM needs an odd conv_size (centred "
                             f"convolution), got {conv_size}")
        if image_size is not None:
            if causal:
                raise ValueError("l2vit: the 2-D form (image_size) is bidirectional only; use causal=False")
            if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                    or any(not isinstance(s, int) or s <= 0 for s in image_size)):
                raise ValueError(f"l2vit: image_size must be a pair of positive ints, got {image_size!r}")
            image_size = (int(image_size[0]), int(image_size[1]))
        self.clamp_min = float(clamp_min)
        self.use_lcm = bool(lcm)
        self.conv_size = conv_size
        self.lcm_norm, self.lcm_input = lcm_norm, lcm_input
        self.image_size = image_size
        self.chunk_size = chunk_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        self.tau = nn.Parameter(torch.full((num_heads,), self.head_dim ** -0.5))
        if self.use_lcm:
            conv = nn.Conv2d if image_size is not None else nn.Conv1d
            self.lcm_in_norm = nn.LayerNorm(dim)
            self.conv1 = conv(dim, dim, conv_size, groups=dim)
            self.lcm_mid_norm = nn.BatchNorm1d(dim) if lcm_norm == "batch" else nn.LayerNorm(dim)
            self.conv2 = conv(dim, dim, conv_size, groups=dim)

    # -------------------------------------------------------------- helpers
    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D) -> 3 x (B, H, N, d)``, ReLU applied to q and k."""
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return torch.relu(qkv[0]), torch.relu(qkv[1]), qkv[2]

    def _conv(self, conv: nn.Module, u: Tensor, real: Tensor | None) -> Tensor:
        """Depthwise convolution of tokens ``u`` ``(B, N, D)``; ``real`` ``(B, N, 1)`` zeroes padding."""
        if real is not None:
            u = u * real
        k = self.conv_size
        if self.image_size is not None:
            B, N, D = u.shape
            Hh, Ww = self.image_size
            img = u.transpose(1, 2).reshape(B, D, Hh, Ww)
            out = F.conv2d(F.pad(img, (k // 2,) * 4), conv.weight, conv.bias, groups=D)
            return out.reshape(B, D, N).transpose(1, 2)
        pad = (k - 1, 0) if self.causal else (k // 2, k // 2)
        out = F.conv1d(F.pad(u.transpose(1, 2), pad), conv.weight, conv.bias, groups=self.dim)
        return out.transpose(1, 2)

    def _mid_norm(self, h: Tensor, real: Tensor | None) -> Tensor:
        """LayerNorm per token, or BatchNorm with statistics over the real tokens only."""
        if self.lcm_norm == "layer":
            return self.lcm_mid_norm(h)
        if real is None:
            return self.lcm_mid_norm(h.reshape(-1, self.dim)).reshape(h.shape)
        keep = real[..., 0].bool()
        out = torch.zeros_like(h)
        out[keep] = self.lcm_mid_norm(h[keep])  # (real tokens, D): padding never enters the statistics
        return out

    def _lcm(self, u: Tensor, a: Tensor, real: Tensor | None) -> Tensor:
        src = u + a if self.lcm_input == "stream" else a
        h = self._conv(self.conv1, self.lcm_in_norm(src), real)
        h = self._mid_norm(F.gelu(h), real)
        return self._conv(self.conv2, h, real)

    # -------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, N, D = x.shape
        if self.image_size is not None:
            if N != self.image_size[0] * self.image_size[1]:
                raise ValueError(f"l2vit: image_size={self.image_size} needs N = "
                                 f"{self.image_size[0] * self.image_size[1]} tokens, got {N}")
            if mask is not None:
                raise ValueError("l2vit: the 2-D form (image_size) takes no padding mask; "
                                 "images have no padded pixels")
        comp, key_mask, real = None, None, None
        if mask is not None:
            comp = compaction(mask)
            x = gather_tokens(x, comp.perm)
            key_mask = torch.arange(N, device=x.device)[None, :] < comp.lengths[:, None]
            real = key_mask.unsqueeze(-1).to(x.dtype)
        q, k, v = self._heads(x)
        o = l2vit_linear_attention(q, k, v, self.tau, self.clamp_min, causal=self.causal,
                                   key_mask=key_mask, chunk_size=self.chunk_size)
        a = self.out_proj(o.transpose(1, 2).reshape(B, N, D))
        y = a + self._lcm(x, a, real) if self.use_lcm else a
        return y if comp is None else gather_tokens(y, comp.inverse)

    # ------------------------------------------------------------ recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        H, d = self.num_heads, self.head_dim
        state = {"S": torch.zeros(batch_size, H, d, d, device=device, dtype=dtype),
                 "z": torch.zeros(batch_size, H, d, device=device, dtype=dtype)}
        if self.use_lcm:
            km1 = self.conv_size - 1
            state["c1"] = torch.zeros(batch_size, self.dim, km1, device=device, dtype=dtype)
            state["c2"] = torch.zeros(batch_size, self.dim, km1, device=device, dtype=dtype)
        return state

    @staticmethod
    def _conv_step(conv: nn.Module, u: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
        """One output of a causal depthwise conv: ``u`` ``(B, D)``, ``buf`` ``(B, D, k-1)``."""
        window = torch.cat([buf, u.unsqueeze(-1)], dim=-1)  # (B, D, k), oldest first
        out = (window * conv.weight[:, 0, :]).sum(-1)
        if conv.bias is not None:
            out = out + conv.bias
        return out, window[:, :, 1:]

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = (t[:, :, 0] for t in self._heads(x_t.unsqueeze(1)))  # (B, H, d)
        S = state["S"] + k.unsqueeze(-1) * v.unsqueeze(-2)
        z = state["z"] + k
        num = (q.unsqueeze(-2) @ S).squeeze(-2) * self.tau.view(1, -1, 1).to(q.dtype)
        den = (q * z).sum(-1, keepdim=True).clamp(min=self.clamp_min)
        a = self.out_proj((num / den).reshape(x_t.shape[0], self.dim))
        new = {"S": S, "z": z}
        if not self.use_lcm:
            return a, new
        src = x_t + a if self.lcm_input == "stream" else a
        h, new["c1"] = self._conv_step(self.conv1, self.lcm_in_norm(src), state["c1"])
        h = self.lcm_mid_norm(F.gelu(h))
        h, new["c2"] = self._conv_step(self.conv2, h, state["c2"])
        return a + h, new

    def extra_repr(self) -> str:
        extra = f", image_size={self.image_size}" if self.image_size is not None else ""
        return (f"{super().extra_repr()}, clamp_min={self.clamp_min}, lcm={self.use_lcm}, "
                f"conv_size={self.conv_size}, lcm_norm={self.lcm_norm!r}, lcm_input={self.lcm_input!r}{extra}")
