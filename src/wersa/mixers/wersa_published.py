"""The published WERSA computation, kept for side-by-side comparison (bidirectional only).

A transcription of the public reference code described in ``reference/WERSA.md``
section 2 (``WERSAAttention`` of ``mrinaldi97/matformer``), for the same weights. Per
layer, with width ``D``, ``H`` heads of width ``d``, ``L`` levels and ``m`` features:

1. gates ``g = sigmoid(MLP(Conv1d_K(x)))`` in ``(0,1)^{N x (L+1)}``, the conv centred
   (``padding="same"``), shared by heads and by q and k;
2. ``q, k <- GELU(q), GELU(k)``;
3. orthonormal Haar DWT of q and k along the sequence, zero-padded to the next power
   of two. The level loop stops early when the padded length drops below 2 (so
   ``N < 2^L`` gives fewer levels). The bands come **finest first**,
   ``[D_1, ..., D_l, A_l]``, and band ``i`` is multiplied by gate column ``i``
   (nearest-resampled to the band's length) times ``scale_weights[i]``: gate 0 is the
   finest detail, gate ``l`` the approximation. Inverse DWT, crop to ``N``;
4. ``b = softplus(beta) + 0.1`` (one scalar);
5. ``phi_q(x) = ReLU((x/b) Omega_q^T) / sqrt(m)``, ``phi_k(x) = ReLU((x/b) Omega_k^T) / sqrt(m)``
   with two independent Gaussian matrices ``Omega_q, Omega_k ~ N(0, 1/d)``;
6. ``y = phi_q (sum phi_k v^T) / (phi_q . sum phi_k + 1e-6)``;
7. per-head LayerNorm, then the output projection.

What it does not do, by construction: a causal form (the published one is not
causal), padding masks (the gates are resampled with the sequence length and the DWT
pads to a power of two, so padding changes real outputs), a bandwidth that matters
(ReLU is positively homogeneous: ``1/b`` cancels), a kernel that depends on the angle
between q and k (independent matrices). The corrected mechanism is :mod:`wersa.mixers.wersa`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.feature_maps import gaussian_random_matrix, relu_features
from ..ops.haar import haar_dwt, haar_idwt
from ..ops.linear_attention import linear_attention
from .base import Capabilities, Mixer
from .random_features import feature_generator
from .wersa import add_scale_gates
from .registry import register_mixer

_BANDWIDTH_FLOOR = 0.1


def published_levels(n_pow2: int, levels: int) -> int:
    """Levels the published loop runs on a padded length ``n_pow2``: it stops below length 2."""
    return min(levels, max(n_pow2.bit_length() - 1, 0))


@register_mixer
class WERSAPublished(Mixer):
    """The published WERSA computation. ``(B, N, D) -> (B, N, D)``; bidirectional, no mask.

    Args:
        dim, num_heads, causal: see :class:`~wersa.mixers.base.Mixer` (``causal`` must be False).
        levels: wavelet levels ``L`` (``decomp_levels``; 0 disables the filter).
        num_features: random features ``m`` (``random_features``).
        conv_size: width of the depthwise gate convolution.
        dropout: dropout inside the gate MLP.
        feature_seed: seed of the two Gaussian matrices (saved with the model).
        qkv_bias, out_bias: biases of the input and output projections.
    """

    example_options = ({"levels": 0},)
    capabilities = Capabilities(
        name="wersa_published", causal=False, bidirectional=True, attention_mask=False,
        linear_time=True,
        summary="the published WERSA code (band-gated Haar DWT, ReLU features with two matrices), for comparison",
        reference="Dentamaro, arXiv 2507.08637 (2025); public code in mrinaldi97/matformer",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        levels: int = 2, num_features: int = 1024, conv_size: int = 33, dropout: float = 0.1,
        feature_seed: int = 0, qkv_bias: bool = False, out_bias: bool = False,
    ):
        if causal:
            raise ValueError(
                "wersa_published reproduces the published bidirectional computation only; its causal path "
                "is not causal (it leaks future tokens). Use causal=False, or the 'wersa' mixer")
        super().__init__(dim, num_heads, causal)
        if not isinstance(levels, int) or levels < 0:
            raise ValueError(f"wersa_published: levels must be a non-negative integer, got {levels!r}")
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"wersa_published: num_features must be a positive integer, got {num_features!r}")
        if not isinstance(conv_size, int) or conv_size <= 0:
            raise ValueError(f"wersa_published: conv_size must be a positive integer, got {conv_size!r}")
        self.levels, self.num_features, self.conv_size = levels, num_features, conv_size
        self.feature_seed = feature_seed
        d = self.head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        self.head_norm = nn.LayerNorm(d)
        if levels > 0:
            add_scale_gates(self, dim, levels, conv_size, None, dropout)
        self.beta = nn.Parameter(torch.zeros(()))
        g = feature_generator(feature_seed)
        # [Omega_q, Omega_k], each (m, d), i.i.d. N(0, 1/d)
        self.register_buffer("omega", torch.stack(
            [gaussian_random_matrix(num_features, d, std=d ** -0.5, generator=g) for _ in range(2)]))

    @property
    def bandwidth(self) -> Tensor:
        return F.softplus(self.beta) + _BANDWIDTH_FLOOR

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _filter(self, t: Tensor, gates: Tensor) -> Tensor:
        """Gate the finest-first Haar bands of ``t`` ``(B, N, D)`` with ``gates`` ``(B, N, L+1)``."""
        n = t.shape[1]
        n_pow2 = 1 << max(n - 1, 0).bit_length()
        levels = published_levels(n_pow2, self.levels)
        coeffs = haar_dwt(F.pad(t, (0, 0, 0, n_pow2 - n)), levels)[::-1]  # [D_1, ..., D_l, A_l]
        scaled = []
        for i, c in enumerate(coeffs):
            g = F.interpolate(gates[..., i].unsqueeze(1), size=c.shape[1], mode="nearest").squeeze(1)
            scaled.append(c * (g * self.scale_weights[i]).unsqueeze(-1))
        return haar_idwt(scaled[::-1], length=n)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = F.gelu(q), F.gelu(k)
        if self.levels > 0:
            k_ = self.conv_size
            h = F.pad(x.transpose(1, 2), ((k_ - 1) // 2, k_ // 2))  # padding="same"
            gates = torch.sigmoid(self.gate_mlp(self.gate_conv(h).transpose(1, 2)))
            q, k = self._filter(q, gates), self._filter(k, gates)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        b = self.bandwidth.to(q.dtype)
        phi_q = relu_features(q / b, self.omega[0].to(q.dtype))
        phi_k = relu_features(k / b, self.omega[1].to(q.dtype))
        y = self.head_norm(linear_attention(phi_q, phi_k, v, eps=1e-6))
        bsz, h_, n, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(bsz, n, h_ * d))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, levels={self.levels}, num_features={self.num_features}, "
                f"conv_size={self.conv_size}")
