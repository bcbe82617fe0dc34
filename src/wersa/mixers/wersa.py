"""WERSA: Wavelet-Enhanced Random Spectral Attention (Dentamaro, arXiv 2507.08637).

Per layer, with width ``D``, ``H`` heads of width ``d = D / H``, ``L`` wavelet levels
and ``m`` random features:

1. Projections ``q, k, v = x W_q, x W_k, x W_v``, split into heads.
2. Content-adaptive gates ``g = sigmoid(MLP(DepthwiseConv_K(x)))`` in ``(0,1)^{N x (L+1)}``
   times learnable per-band ``scale_weights``. The conv is centred in bidirectional
   mode and left-padded in causal mode, so gate ``t`` sees only tokens ``<= t``.
3. Multi-resolution filtering of q and k (gates shared by heads, q and k):
   bidirectional — orthonormal Haar DWT (:func:`wersa.ops.haar.haar_filter`), each
   coefficient scaled by its band's gate averaged over the coefficient's block;
   causal — the causal Haar pyramid (:mod:`wersa.ops.causal_pyramid`).
4. Random spectral features with one orthogonal matrix ``Omega`` per head, shared
   by q and k (a fixed, saved buffer; optional redraw). q and k are l2-normalised
   per head and divided by a trainable bandwidth ``b = softplus(beta) + 1e-3``
   (per head), so the positive features estimate ``exp(cos(q, k) / b^2)``: ``b`` is
   a real temperature, and the bounded norms keep the estimator's variance low
   (it grows like ``exp(|q|^2 + |k|^2)``) and rule out overflow, so keys need no
   stabiliser that could leak the future.
5. Linear attention (bidirectional, causal chunked, or recurrent), padded keys excluded.
6. Per-head LayerNorm, concatenation, ``W_o``.

``feature_map`` selects step 4:

* ``"softmax"`` (default): positive FAVOR+ features, ``E[phi(q).phi(k)] = exp(q.k)``.
* ``"relu"``: ReLU features with the shared matrix (cheaper, not a softmax kernel;
  the bandwidth cancels, as ReLU is positively homogeneous).
* ``"exact"``: the kernel the features estimate, computed exactly in ``O(N^2)``
  (``softmax(cos(q,k) / b^2)``): the oracle random features converge to.
* ``"published"``: the computation of the public reference code, kept for
  comparison (bidirectional only): GELU on q and k, DWT zero-padded to a power of
  two, gates nearest-resampled to each band, ``b = softplus(beta) + 0.1``, two
  independent Gaussian matrices for q and k with ReLU features (the kernel then
  ignores the angle between q and k, and ``b`` cancels). Its causal path is not
  causal, so ``causal=True`` with it is refused.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.causal_pyramid import causal_haar_pyramid, causal_haar_pyramid_lean, causal_haar_pyramid_step
from ..ops.depthwise_conv import depthwise_conv1d
from ..ops.favor_attention import favor_attention, favor_attention_with_state
from ..ops.feature_maps import gaussian_random_matrix, orthogonal_random_matrix, relu_features, softmax_kernel_features
from ..ops.haar import block_mean, haar_dwt, haar_filter, haar_filter_lean, haar_idwt, padded_length
from ..ops.linear_attention import (
    LinearAttentionState,
    causal_linear_attention,
    linear_attention,
    linear_attention_init_state,
    linear_attention_step,
)
from ..ops.softmax_attention import softmax_attention_reference
from .base import Capabilities, Mixer
from .registry import register_mixer

FEATURE_MAPS = ("softmax", "relu", "exact", "published")
_BANDWIDTH_FLOOR = 1e-3
_PUBLISHED_BANDWIDTH_FLOOR = 0.1


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


@register_mixer
class WERSA(Mixer):
    """WERSA attention. ``(B, N, D) -> (B, N, D)``; causal, bidirectional, recurrent.

    Args:
        dim, num_heads, causal: see :class:`~wersa.mixers.base.Mixer`.
        levels: wavelet levels ``L`` (0 disables the multi-resolution filter).
        num_features: random features ``m`` per head.
        feature_map: ``"softmax"`` | ``"relu"`` | ``"exact"`` | ``"published"``.
        kernel_size: width of the depthwise gate convolution.
        gate_hidden: hidden width of the gate MLP (default ``dim // 4``).
        chunk_size: tokens per chunk of the causal linear attention.
        bandwidth: initial bandwidth ``b``.
        redraw_interval: redraw ``Omega`` every this many training forwards
            (``None``: never). Eval mode never redraws.
        feature_seed: seed of the random matrices (reproducible, saved with the model).
        dropout: dropout inside the gate MLP.
        eps: denominator guard of the linear attention.
        fused: compute the wavelet filter and the softmax-feature attention with
            memory-lean autograd nodes that recompute intermediates (features,
            Haar coefficients, pyramid means) in the backward pass instead of
            storing them (:mod:`wersa.ops.favor_attention`), and the gate
            convolution with a backward made of forward convolutions
            (:mod:`wersa.ops.depthwise_conv`). Same values and gradients;
            ``False`` selects the plain autograd composition.
        block_size: tokens whose features the fused path materialises at a time.
    """

    capabilities = Capabilities(
        name="wersa",
        causal=True,
        bidirectional=True,
        attention_mask=True,
        left_padding=True,
        recurrent=True,
        constant_state=True,
        linear_time=True,
        summary="Haar-wavelet gated q/k + shared-matrix random-feature linear attention",
        reference="Dentamaro, arXiv 2507.08637 (2025)",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        levels: int = 2, num_features: int = 256, feature_map: str = "softmax",
        kernel_size: int = 33, gate_hidden: int | None = None, chunk_size: int = 128,
        bandwidth: float = 1.0, redraw_interval: int | None = None, feature_seed: int = 0,
        dropout: float = 0.0, eps: float = 1e-6, fused: bool = True, block_size: int = 2048,
    ):
        super().__init__(dim, num_heads, causal)
        if not isinstance(levels, int) or levels < 0:
            raise ValueError(f"wersa: levels must be a non-negative integer, got {levels!r}")
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"wersa: num_features must be a positive integer, got {num_features!r}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"wersa: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if not isinstance(kernel_size, int) or kernel_size <= 0:
            raise ValueError(f"wersa: kernel_size must be a positive integer, got {kernel_size!r}")
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"wersa: chunk_size must be a positive integer, got {chunk_size!r}")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"wersa: block_size must be a positive integer, got {block_size!r}")
        if not bandwidth > 0:
            raise ValueError(f"wersa: bandwidth must be positive, got {bandwidth!r}")
        if redraw_interval is not None and (not isinstance(redraw_interval, int) or redraw_interval <= 0):
            raise ValueError(f"wersa: redraw_interval must be a positive integer or None, got {redraw_interval!r}")
        if feature_map == "published" and causal:
            raise ValueError(
                "wersa: feature_map='published' reproduces the published bidirectional computation only; "
                "its causal path is not causal (it leaks future tokens). Use causal=False, or another feature_map"
            )
        if feature_map == "published":
            # The published computation resamples gates with the sequence length and
            # pads to a power of two, so padding changes real outputs: refuse masks.
            self.capabilities = dataclasses.replace(
                type(self).capabilities, attention_mask=False, left_padding=False)
        elif feature_map == "exact":
            self.capabilities = dataclasses.replace(
                type(self).capabilities, recurrent=False, constant_state=False, linear_time=False)
        self.levels = levels
        self.num_features = num_features
        self.feature_map = feature_map
        self.kernel_size = kernel_size
        self.chunk_size = chunk_size
        self.redraw_interval = redraw_interval
        self.feature_seed = feature_seed
        self.eps = eps
        self.fused = bool(fused)
        self.block_size = block_size
        d = self.head_dim

        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.head_norm = nn.LayerNorm(d)
        if levels > 0:  # no gates without bands (and no unused parameters for DDP)
            hidden = gate_hidden if gate_hidden is not None else max(dim // 4, 1)
            self.gate_conv = nn.Conv1d(dim, dim, kernel_size, groups=dim)
            self.gate_mlp = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, levels + 1))
            self.scale_weights = nn.Parameter(torch.full((levels + 1,), 0.5))
        if feature_map == "published":
            self.beta = nn.Parameter(torch.zeros(()))
        else:
            self.beta = nn.Parameter(torch.full((num_heads,), _inverse_softplus(bandwidth - _BANDWIDTH_FLOOR)))
        self.register_buffer("omega", self._draw_features(), persistent=True)
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long), persistent=True)

    # ------------------------------------------------------------ random features
    def _draw_features(self, generation: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(int(self.feature_seed) * 1_000_003 + generation)
        m, d, h = self.num_features, self.head_dim, self.num_heads
        if self.feature_map == "published":
            # two independent Gaussian matrices N(0, 1/d): [Omega_q, Omega_k], each (m, d)
            return torch.stack([gaussian_random_matrix(m, d, std=d ** -0.5, generator=g) for _ in range(2)])
        return torch.stack([orthogonal_random_matrix(m, d, generator=g) for _ in range(h)])  # (H, m, d)

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new ``Omega`` (deterministic given ``feature_seed`` and the redraw count)."""
        generation = int(self.forward_count.item()) // (self.redraw_interval or 1)
        self.omega.copy_(self._draw_features(generation).to(self.omega))

    def _maybe_redraw(self) -> None:
        if self.training and self.redraw_interval is not None:
            if int(self.forward_count.item()) % self.redraw_interval == 0 and int(self.forward_count.item()) > 0:
                self.redraw_features()
            self.forward_count += 1

    @property
    def bandwidth(self) -> Tensor:
        """The bandwidth ``b`` per head (a scalar for ``feature_map='published'``)."""
        floor = _PUBLISHED_BANDWIDTH_FLOOR if self.feature_map == "published" else _BANDWIDTH_FLOOR
        return F.softplus(self.beta) + floor

    # ------------------------------------------------------------------ pieces
    def _heads(self, t: Tensor) -> Tensor:
        """``(B, N, D) -> (B, H, N, d)``."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _gates(self, x: Tensor) -> Tensor:
        """Per-token band gains ``(B, N, L+1)``: sigmoid(MLP(conv(x))) * scale_weights."""
        h = x.transpose(1, 2)  # (B, D, N)
        k = self.kernel_size
        if self.causal:
            h = F.pad(h, (k - 1, 0))
        else:
            h = F.pad(h, ((k - 1) // 2, k // 2))
        if self.fused:
            h = depthwise_conv1d(h, self.gate_conv.weight, self.gate_conv.bias).transpose(1, 2)  # (B, N, D)
        else:
            h = self.gate_conv(h).transpose(1, 2)
        return torch.sigmoid(self.gate_mlp(h)) * self.scale_weights

    def _features(self, t: Tensor, is_query: bool) -> Tensor:
        """``(B, H, N, d) -> (B, H, N, m)`` (or ``(B, H, d) -> (B, H, m)``), computed in >= fp32."""
        if t.dim() == 3:  # one token per sequence: (B, H, d)
            return self._features(t.unsqueeze(2), is_query).squeeze(2)
        work = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
        omega = self.omega.to(work.dtype)
        b = self.bandwidth.to(work.dtype).view(-1, 1, 1)
        work = F.normalize(work, dim=-1, eps=1e-6) / b
        if self.feature_map == "relu":
            return relu_features(work, omega)
        return softmax_kernel_features(work, omega, stabilize=is_query)

    def _filtered_qkv(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Project, gate and wavelet-filter: ``(B, N, D) -> 3 x (B, H, N, d)``."""
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if mask is not None:
            m4 = mask[:, None, :, None].to(q.dtype)
            q, k = q * m4, k * m4
        if self.levels == 0:
            return q, k, v
        gains = self._gates(x)  # (B, N, L+1)
        if self.causal:
            pyramid = causal_haar_pyramid_lean if self.fused else causal_haar_pyramid
            q = pyramid(q, gains, self.levels)
            k = pyramid(k, gains, self.levels)
        else:
            band_gains = self._band_gains(gains, mask)
            filt = haar_filter_lean if self.fused else haar_filter
            q = filt(q, band_gains, self.levels)
            k = filt(k, band_gains, self.levels)
        return q, k, v

    def _band_gains(self, gains: Tensor, mask: Tensor | None) -> list[Tensor]:
        """Per-coefficient gains in DWT order ``[g_A, g_D_L, ..., g_D_1]``: block means of the gates."""
        L = self.levels
        n = gains.shape[1]
        pad = padded_length(n, L) - n  # the DWT pads to a multiple of 2^L; pads never count
        valid = torch.ones(gains.shape[:2], dtype=torch.bool, device=gains.device) if mask is None else mask
        gains, valid = F.pad(gains, (0, 0, 0, pad)), F.pad(valid, (0, pad))
        out = [block_mean(gains[..., 0], 2 ** L, valid)]
        for level in range(L, 0, -1):
            out.append(block_mean(gains[..., level], 2 ** level, valid))
        return out

    def _merge_heads(self, y: Tensor) -> Tensor:
        """``(B, H, N, d) -> (B, N, D)`` through the per-head norm and ``W_o``."""
        y = self.head_norm(y)
        b, h, n, d = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * d))

    # ----------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        self._maybe_redraw()
        if self.feature_map == "published":
            return self._forward_published(x)
        return self._merge_heads(self.attend(x, mask))

    def attend(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The attention core before the per-head norm: ``(B, N, D) -> (B, H, N, d)``."""
        q, k, v = self._filtered_qkv(x, mask)
        if self.feature_map == "exact":
            b = self.bandwidth.view(1, -1, 1, 1).to(q.dtype)
            qn, kn = F.normalize(q, dim=-1, eps=1e-6) / b, F.normalize(k, dim=-1, eps=1e-6) / b
            return softmax_attention_reference(qn, kn, v, causal=self.causal, key_mask=mask, scale=1.0)
        if self._use_fused_core():
            work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
            y = favor_attention(q.to(work), k.to(work), v.to(work), self.omega, self.bandwidth.to(work),
                                causal=self.causal, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size,
                                block_size=self.block_size)
            return y.to(x.dtype)
        phi_q, phi_k = self._features(q, True), self._features(k, False)
        vv = v.to(phi_q.dtype)
        if self.causal:
            y = causal_linear_attention(phi_q, phi_k, vv, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size)
        else:
            y = linear_attention(phi_q, phi_k, vv, key_mask=mask, eps=self.eps)
        return y.to(x.dtype)

    def _use_fused_core(self) -> bool:
        # The fused node treats Omega as a constant; a trainable Omega takes the plain path.
        return self.fused and self.feature_map == "softmax" and not self.omega.requires_grad

    def _forward_published(self, x: Tensor) -> Tensor:
        """The published bidirectional computation (WERSA.md section 2), same weights."""
        n = x.shape[1]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._heads(F.gelu(q)), self._heads(F.gelu(k)), self._heads(v)
        if self.levels > 0:
            gates = torch.sigmoid(self.gate_mlp(self.gate_conv(
                F.pad(x.transpose(1, 2), ((self.kernel_size - 1) // 2, self.kernel_size // 2))).transpose(1, 2)))
            n_pow2 = 1 << max(n - 1, 0).bit_length()
            n_pow2 = max(n_pow2, 2 ** self.levels)
            qp = F.pad(q, (0, 0, 0, n_pow2 - n))
            kp = F.pad(k, (0, 0, 0, n_pow2 - n))
            cq, ck = haar_dwt(qp, self.levels), haar_dwt(kp, self.levels)
            for i in range(self.levels + 1):
                band_len = cq[i].shape[-2]
                g = F.interpolate(gates[..., i].unsqueeze(1), size=band_len, mode="nearest").squeeze(1)
                g = (g * self.scale_weights[i]).view(g.shape[0], 1, band_len, 1)
                cq[i], ck[i] = cq[i] * g, ck[i] * g
            q, k = haar_idwt(cq, length=n), haar_idwt(ck, length=n)
        b = self.bandwidth
        phi_q = relu_features(q / b, self.omega[0].to(q.dtype))
        phi_k = relu_features(k / b, self.omega[1].to(k.dtype))
        y = linear_attention(phi_q, phi_k, v, eps=self.eps)
        return self._merge_heads(y)

    # --------------------------------------------------------------- recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        hist = 2 ** self.levels - 1
        la = linear_attention_init_state(batch_size, self.num_heads, self.num_features, self.head_dim,
                                         device=device, dtype=work)
        return {
            "conv": torch.zeros(batch_size, self.kernel_size - 1, self.dim, device=device, dtype=dtype),
            "q_hist": torch.zeros(batch_size, self.num_heads, hist, self.head_dim, device=device, dtype=dtype),
            "k_hist": torch.zeros(batch_size, self.num_heads, hist, self.head_dim, device=device, dtype=dtype),
            "S": la.S,
            "z": la.z,
        }

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        b = x_t.shape[0]
        q, k, v = self.qkv(x_t).chunk(3, dim=-1)
        q = q.view(b, self.num_heads, self.head_dim)
        k = k.view(b, self.num_heads, self.head_dim)
        v = v.view(b, self.num_heads, self.head_dim)
        new = dict(state)
        window = torch.cat([state["conv"], x_t.unsqueeze(1)], dim=1)  # (B, K, D), newest last
        if self.levels > 0:
            conv = (window * self.gate_conv.weight[:, 0, :].T.unsqueeze(0)).sum(1) + self.gate_conv.bias
            gains = torch.sigmoid(self.gate_mlp(conv)) * self.scale_weights  # (B, L+1)
            q, new["q_hist"] = causal_haar_pyramid_step(q, state["q_hist"], gains, self.levels)
            k, new["k_hist"] = causal_haar_pyramid_step(k, state["k_hist"], gains, self.levels)
        new["conv"] = window[:, 1:]
        phi_q, phi_k = self._features(q, True), self._features(k, False)
        y, la = linear_attention_step(phi_q, phi_k, v.to(phi_q.dtype),
                                      LinearAttentionState(state["S"], state["z"]), eps=self.eps)
        new["S"], new["z"] = la.S, la.z
        return self._merge_heads(y.to(x_t.dtype).unsqueeze(2)).squeeze(1), new

    def prefill(self, x: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Parallel causal pass over a prompt that also returns the decoding state."""
        self._require_recurrent()
        self._check_x(x)
        b, n, _ = x.shape
        mask = self._check_mask(attention_mask, b, n, x.device)
        state = self.init_state(b, x.device, x.dtype)
        if n == 0:
            return x * 0.0, state
        xm = x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)
        q, k, v = self._filtered_qkv(x, mask)
        if self._use_fused_core() and not torch.is_grad_enabled():
            work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
            y, la = favor_attention_with_state(q.to(work), k.to(work), v.to(work), self.omega,
                                               self.bandwidth.to(work), key_mask=mask, eps=self.eps,
                                               chunk_size=self.chunk_size, block_size=self.block_size)
        else:
            phi_q, phi_k = self._features(q, True), self._features(k, False)
            y, la = causal_linear_attention(phi_q, phi_k, v.to(phi_q.dtype), key_mask=mask, eps=self.eps,
                                            chunk_size=self.chunk_size, return_state=True)
        y = self._merge_heads(y.to(x.dtype))
        if mask is not None:
            y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
        # Buffers hold the last inputs (zeros before the start), as stepping would leave them.
        K = self.kernel_size
        state["conv"] = F.pad(xm.transpose(1, 2), (K - 1, 0)).transpose(1, 2)[:, n:n + K - 1] if K > 1 \
            else state["conv"]
        hist = 2 ** self.levels - 1
        if hist:
            # The pyramid's history is the last 2^L - 1 raw projections: project only those tokens.
            tail = xm[:, -hist:]
            qr, kr, _ = self.qkv(tail).chunk(3, dim=-1)
            qr, kr = self._heads(qr), self._heads(kr)
            if mask is not None:
                m4 = mask[:, -hist:][:, None, :, None].to(qr.dtype)
                qr, kr = qr * m4, kr * m4
            state["q_hist"] = F.pad(qr, (0, 0, hist - tail.shape[1], 0))
            state["k_hist"] = F.pad(kr, (0, 0, hist - tail.shape[1], 0))
        state["S"], state["z"] = la.S, la.z
        return y, state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, levels={self.levels}, num_features={self.num_features}, "
                f"feature_map={self.feature_map!r}, kernel_size={self.kernel_size}, fused={self.fused}")
