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
  Keys are shifted by one constant per head that depends on ``Omega`` and ``b`` only
  (:func:`~wersa.ops.feature_maps.normalized_key_shift`): it cancels in the ratio and
  keeps the features above the denominator guard at small bandwidths.
* ``"relu"``: ReLU features with the shared matrix (cheaper, not a softmax kernel;
  the bandwidth cancels, as ReLU is positively homogeneous).

The kernel the softmax features estimate, ``softmax(cos(q, k) / b^2)``, is computed
exactly (``O(N^2)``) by :func:`exact_kernel_attention` / :meth:`WERSA.attend_exact`:
the oracle of the tests and of the kernel-accuracy table (docs/wersa.md). The
published computation is the separate mixer ``wersa_published``
(:mod:`wersa.mixers.wersa_published`).

Padding. Haar blocks, the gate convolution and the pyramid windows depend on where a
token sits, so with a mask the real tokens are first moved to the front of each row
(:mod:`wersa.ops.compaction`) and the outputs moved back: any padding pattern (right,
left, interior) gives the outputs of the unpadded sequence, and the parallel form
equals ``step``, which skips padded tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops.compaction import compaction, gather_tokens
from ..ops.causal_pyramid import (TAPS_MAX_LEVELS, causal_haar_pyramid, causal_haar_pyramid_lean,
                                  pyramid_delay_weights, pyramid_window_weights)
from ..ops.depthwise_conv import depthwise_conv1d
from ..ops.favor_attention import favor_attention, favor_attention_with_state
from ..ops.feature_maps import (
    normalized_key_shift,
    relu_features,
    softmax_kernel_features,
)
from ..ops.haar import block_mean, haar_filter, haar_filter_lean, padded_length
from ..ops.heads import compute_dtype, split_qkv_heads
from ..ops.linear_attention import causal_linear_attention, linear_attention, linear_attention_init_state
from ..ops.softmax_attention import softmax_attention_reference
from .base import Capabilities, Mixer
from .random_features import RandomFeatureMixin, check_random_feature_options
from .registry import register_mixer

FEATURE_MAPS = ("softmax", "relu")
_MOVED_FEATURE_MAPS = {
    "published": "the published computation is the mixer 'wersa_published' (bidirectional, no mask)",
    "exact": ("the exact kernel is the oracle function wersa.mixers.wersa.exact_kernel_attention "
              "(or WERSA.attend_exact on a built mixer)"),
}
_NORM_EPS = 1e-6


def exact_kernel_attention(q: Tensor, k: Tensor, v: Tensor, bandwidth: Tensor, *, causal: bool,
                           key_mask: Tensor | None = None) -> Tensor:
    """The kernel WERSA's softmax features estimate, computed exactly: ``O(N^2)``.

    ``softmax(cos(q_i, k_j) / b^2) v`` per head, i.e. softmax attention of
    ``q / (|q| b)`` and ``k / (|k| b)`` with scale 1. ``q, k, v``: ``(B, H, N, d)``;
    ``bandwidth``: ``(H,)``; ``key_mask``: ``(B, N)`` bool. Returns ``(B, H, N, d)``.
    """
    b = bandwidth.view(1, -1, 1, 1).to(q.dtype)
    qn, kn = F.normalize(q, dim=-1, eps=_NORM_EPS) / b, F.normalize(k, dim=-1, eps=_NORM_EPS) / b
    return softmax_attention_reference(qn, kn, v, causal=causal, key_mask=key_mask, scale=1.0)


def _last_tokens(x: Tensor, lengths: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The last ``count`` real tokens of right-padded rows: ``(B, N, D) -> (B, count, D)``.

    Row ``b`` holds ``x[b, lengths[b] - count : lengths[b]]``, zeros before the start;
    also returns the ``(B, count)`` bool mask of positions at or after the start.
    """
    index = lengths.view(-1, 1) + torch.arange(count, device=x.device)  # in the left-padded frame
    out = gather_tokens(F.pad(x, (0, 0, count, 0)), index)
    return out, index >= count


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def add_scale_gates(module: nn.Module, dim: int, levels: int, conv_size: int, hidden: int | None,
                    dropout: float) -> None:
    """The content-adaptive scale gates of WERSA and of the published code, as attributes of ``module``.

    ``gate_conv``: depthwise ``Conv1d`` of width ``conv_size``; ``gate_mlp``: ``D -> hidden -> L+1``
    (``hidden`` defaults to ``D / 4``) with ReLU and dropout; ``scale_weights``: ``(L+1,)``, 0.5 each.
    Gates are ``sigmoid(gate_mlp(gate_conv(x))) * scale_weights``, one per band.
    """
    hidden = hidden if hidden is not None else max(dim // 4, 1)
    module.gate_conv = nn.Conv1d(dim, dim, conv_size, groups=dim)
    module.gate_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, levels + 1))
    module.scale_weights = nn.Parameter(torch.full((levels + 1,), 0.5))


@register_mixer
class WERSA(RandomFeatureMixin, Mixer):
    """WERSA attention. ``(B, N, D) -> (B, N, D)``; causal, bidirectional, recurrent.

    Args:
        dim, num_heads, causal: see :class:`~wersa.mixers.base.Mixer`.
        levels: wavelet levels ``L`` (0 disables the multi-resolution filter).
        num_features: random features ``m`` per head.
        feature_map: ``"softmax"`` | ``"relu"``.
        conv_size: width of the depthwise gate convolution.
        gate_hidden: hidden width of the gate MLP (default ``dim // 4``).
        chunk_size: tokens per chunk of the causal linear attention.
        bandwidth: initial bandwidth ``b``.
        min_bandwidth: floor of ``b = softplus(beta) + min_bandwidth``. Below about 0.25
            the softmax features of l2-normalised keys span more than the float range
            (the kernel ``exp(cos / b^2)`` does), so the estimator has nothing to give.
        redraw_interval: redraw ``Omega`` every this many training forwards
            (``None``: never). Eval mode never redraws.
        feature_seed: seed of the random matrices (reproducible, saved with the model).
        dropout: dropout inside the gate MLP.
        eps: denominator guard of the linear attention.
        recompute: compute the wavelet filter and the softmax-feature attention with
            memory-lean autograd nodes that recompute intermediates (features,
            Haar coefficients, pyramid means) in the backward pass instead of
            storing them (:mod:`wersa.ops.favor_attention`), and the gate
            convolution with a backward made of forward convolutions
            (:mod:`wersa.ops.depthwise_conv`). Same values and gradients;
            ``False`` selects the plain autograd composition.
        recompute_gates: also recompute the gate convolution and the gate MLP's first
            layer in the backward pass (activation checkpointing), so their ``(B, N, D)``
            output is not saved: 256 MiB less at 128k tokens and ``D = 512``, for about
            4-7% more time at 64k (docs/performance.md, run E). Needs ``recompute=True``.
        block_size: tokens whose features the recompute path materialises at a time.
        qkv_bias, out_bias: biases of the input and output projections.
    """

    step_fullgraph = True  # the token step is one graph for torch.compile
    renamed_options = {"fused": "recompute", "kernel_size": "conv_size"}
    renamed_parameters = {"out.": "out_proj.", "omega": "projection_matrix",
                          "forward_count": "calls_since_redraw"}
    per_head_features = True

    example_options = (
        {"levels": 1, "chunk_size": 4, "num_features": 32},
        {"levels": 3, "chunk_size": 16, "conv_size": 5, "num_features": 32},
        {"feature_map": "relu", "chunk_size": 8, "num_features": 16},
        {"levels": 0}, {"recompute": False}, {"recompute_gates": True},
    )
    capabilities = Capabilities(
        name="wersa", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="Haar-wavelet gated q/k + shared-matrix random-feature linear attention",
        reference="Dentamaro, arXiv 2507.08637 (2025)",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        levels: int = 2, num_features: int = 256, feature_map: str = "softmax",
        conv_size: int = 33, gate_hidden: int | None = None, chunk_size: int = 64,
        bandwidth: float = 1.0, min_bandwidth: float = 0.25, redraw_interval: int | None = None,
        feature_seed: int = 0, dropout: float = 0.0, eps: float = 1e-6, recompute: bool = True,
        recompute_gates: bool = False, block_size: int = 2048, qkv_bias: bool = False, out_bias: bool = False,
    ):
        super().__init__(dim, num_heads, causal)
        if not isinstance(levels, int) or levels < 0:
            raise ValueError(f"wersa: levels must be a non-negative integer, got {levels!r}")
        check_random_feature_options("wersa", num_features, feature_seed, redraw_interval)
        if feature_map in _MOVED_FEATURE_MAPS:
            raise ValueError(f"wersa: feature_map={feature_map!r} is no longer a mode of this mixer: "
                             f"{_MOVED_FEATURE_MAPS[feature_map]}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"wersa: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if not isinstance(conv_size, int) or conv_size <= 0:
            raise ValueError(f"wersa: conv_size must be a positive integer, got {conv_size!r}")
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"wersa: chunk_size must be a positive integer, got {chunk_size!r}")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"wersa: block_size must be a positive integer, got {block_size!r}")
        if not isinstance(recompute_gates, bool):
            raise ValueError(f"wersa: recompute_gates must be True or False, got {recompute_gates!r}")
        if recompute_gates and levels == 0:
            raise ValueError("wersa: recompute_gates=True with levels=0: there are no gates to recompute")
        if recompute_gates and not recompute:
            raise ValueError("wersa: recompute_gates=True needs recompute=True (the plain path recomputes nothing)")
        if not min_bandwidth > 0:
            raise ValueError(f"wersa: min_bandwidth must be positive, got {min_bandwidth!r}")
        if not bandwidth > min_bandwidth:
            raise ValueError(f"wersa: bandwidth must exceed min_bandwidth={min_bandwidth}, got {bandwidth!r}")
        self.levels = levels
        self.num_features = num_features
        self.feature_map = feature_map
        self.conv_size = conv_size
        self.min_bandwidth = float(min_bandwidth)
        self.chunk_size = chunk_size
        self.redraw_interval = redraw_interval
        self.feature_seed = feature_seed
        self.eps = eps
        self.recompute = bool(recompute)
        self.recompute_gates = recompute_gates
        self.block_size = block_size
        d = self.head_dim

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        self.head_norm = nn.LayerNorm(d)
        if levels > 0:  # no gates without bands (and no unused parameters for DDP)
            add_scale_gates(self, dim, levels, conv_size, gate_hidden, dropout)
        self.beta = nn.Parameter(torch.full((num_heads,), _inverse_softplus(bandwidth - min_bandwidth)))
        self._init_features()  # Omega: (H, m, d), one orthogonal matrix per head

    @property
    def omega(self) -> Tensor:
        """``Omega``, ``(H, m, d)``: the per-head projection shared by q and k."""
        return self.projection_matrix

    @property
    def bandwidth(self) -> Tensor:
        """The bandwidth ``b`` per head ``(H,)``."""
        return F.softplus(self.beta) + self.min_bandwidth

    def _key_shift(self, dtype) -> Tensor | None:
        """Per-head constant shift of the key exponents (softmax features only), detached."""
        if self.feature_map != "softmax":
            return None
        return normalized_key_shift(self.omega.to(dtype), self.bandwidth.to(dtype))

    # ------------------------------------------------------------------ pieces
    def _gates(self, x: Tensor) -> Tensor:
        """Per-token band gains ``(B, N, L+1)``: sigmoid(MLP(conv(x))) * scale_weights."""
        h = x.transpose(1, 2)  # (B, D, N)
        k = self.conv_size
        padding = (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2)
        if not self.recompute:
            logits = self.gate_mlp(self.gate_conv(F.pad(h, padding)).transpose(1, 2))
        elif self.recompute_gates and torch.is_grad_enabled():
            # Recomputed in the backward pass: only the (B, D, N) view of x is saved, not the
            # convolution's (B, N, D) output (256 MiB at 128k tokens, D = 512) for the MLP's
            # weight gradient; the recompute is one depthwise convolution and the MLP's first layer.
            logits = checkpoint(self._gate_logits, h, padding, use_reentrant=False)
        else:
            logits = self._gate_logits(h, padding)
        return torch.sigmoid(logits) * self.scale_weights

    def _gate_logits(self, h: Tensor, padding: tuple[int, int]) -> Tensor:
        """Gate MLP of the depthwise convolution of ``h (B, D, N)``, padded inside its node: ``(B, N, L+1)``."""
        return self.gate_mlp(depthwise_conv1d(h, self.gate_conv.weight, self.gate_conv.bias, padding).transpose(1, 2))

    def _features(self, t: Tensor, is_query: bool) -> Tensor:
        """``(B, H, N, d) -> (B, H, N, m)`` (or ``(B, H, d) -> (B, H, m)``), computed in >= fp32."""
        if t.dim() == 3:  # one token per sequence: (B, H, d)
            return self._features(t.unsqueeze(2), is_query).squeeze(2)
        work = t.to(compute_dtype(t.dtype))
        omega = self.omega.to(work.dtype)
        b = self.bandwidth.to(work.dtype).view(-1, 1, 1)
        work = F.normalize(work, dim=-1, eps=_NORM_EPS) / b
        if self.feature_map == "relu":
            return relu_features(work, omega)
        return softmax_kernel_features(work, omega, stabilize=is_query,
                                       shift=None if is_query else self._key_shift(work.dtype))

    def _projected_qkv(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Project and gate: ``(B, N, D) -> 3 x (B, H, N, d)`` (padded q and k zeroed) and the
        per-token band gains ``(B, N, L+1)`` (``None`` without levels)."""
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        # Views of the fused projection; the attention core's gradients for them fill one
        # buffer laid out like it, so the projection's backward needs no concatenation.
        q, k, v = split_qkv_heads(self.qkv(x), self.num_heads)
        if mask is not None:
            m4 = mask[:, None, :, None].to(q.dtype)
            q, k = q * m4, k * m4
        return q, k, v, (self._gates(x) if self.levels else None)

    def _filtered_qkv(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Project, gate and wavelet-filter: ``(B, N, D) -> 3 x (B, H, N, d)``."""
        q, k, v, gains = self._projected_qkv(x, mask)
        if gains is None:
            return q, k, v
        if self.causal:
            pyramid = causal_haar_pyramid_lean if self.recompute else causal_haar_pyramid
            q = pyramid(q, gains, self.levels)
            k = pyramid(k, gains, self.levels)
        else:
            band_gains = self._band_gains(gains, mask)
            filt = haar_filter_lean if self.recompute else haar_filter
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
        """``(B, H, N, d) -> (B, N, D)`` through the per-head norm and ``W_o``. The norm (over
        ``d``) runs on the token-major view ``(B, N, H, d)``: the attention core stores its
        output that way, so neither the norm nor the merge copies it."""
        b, h, n, d = y.shape
        return self.out_proj(self.head_norm(y.transpose(1, 2)).reshape(b, n, h * d))

    # ----------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        self._maybe_redraw()
        return self._merge_heads(self.attend(x, mask))

    def _compacted(self, core, x: Tensor, mask: Tensor | None) -> Tensor:
        """Run ``core(x, right_padded_mask) -> (B, H, N, d)`` on the real tokens moved to the front.

        Haar blocks, conv taps and pyramid windows depend on positions: compaction makes
        any padding pattern look like right padding, which they honour exactly.
        """
        if mask is None:
            return core(x, None)
        comp = compaction(mask)
        y = core(gather_tokens(x, comp.perm), gather_tokens(mask, comp.perm))
        return gather_tokens(y.transpose(1, 2), comp.inverse).transpose(1, 2)

    def attend(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The attention core before the per-head norm: ``(B, N, D) -> (B, H, N, d)``."""
        return self._compacted(self._attend, x, mask)

    def attend_exact(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """:meth:`attend` with the exact kernel the features estimate (:func:`exact_kernel_attention`)."""
        def core(xc, mc):
            q, k, v = self._filtered_qkv(xc, mc)
            return exact_kernel_attention(q, k, v, self.bandwidth, causal=self.causal, key_mask=mc)
        return self._compacted(core, x, mask)

    def _attend(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """:meth:`attend` for a right-padded ``mask`` (or ``None``)."""
        if self._use_lean_core():
            # The wavelet filter runs inside the core, block by block (causal: the pyramid as
            # per-token window taps; bidirectional: the Haar filter, local to blocks of 2^L
            # tokens), so the filtered q and k are never stored (512 MiB at 128k tokens, D = 512).
            taps = haar_gains = None
            if self.causal and 0 < self.levels <= TAPS_MAX_LEVELS:
                q, k, v, gains = self._projected_qkv(x, mask)
                taps = pyramid_delay_weights(gains, self.levels)
            elif not self.causal and self.levels > 0:
                q, k, v, gains = self._projected_qkv(x, mask)
                haar_gains = self._band_gains(gains, mask)
            else:
                q, k, v = self._filtered_qkv(x, mask)
            work = compute_dtype(q.dtype)
            y = favor_attention(q.to(work), k.to(work), v.to(work), self.omega, self.bandwidth.to(work),
                                causal=self.causal, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size,
                                block_size=self.block_size, key_shift=self._key_shift(work),
                                taps=None if taps is None else taps.to(work), haar_gains=haar_gains)
            return y.to(x.dtype)
        q, k, v = self._filtered_qkv(x, mask)
        phi_q, phi_k = self._features(q, True), self._features(k, False)
        vv = v.to(phi_q.dtype)
        if self.causal:
            y = causal_linear_attention(phi_q, phi_k, vv, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size)
        else:
            y = linear_attention(phi_q, phi_k, vv, key_mask=mask, eps=self.eps)
        return y.to(x.dtype)

    def _use_lean_core(self) -> bool:
        # The lean node treats Omega as a constant; a trainable Omega takes the plain path.
        return self.recompute and self.feature_map == "softmax" and not self.omega.requires_grad

    # --------------------------------------------------------------- recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        work = compute_dtype(dtype)
        hist = 2 ** self.levels - 1
        la = linear_attention_init_state(batch_size, self.num_heads, self.num_features, self.head_dim,
                                         device=device, dtype=work)
        return {
            "conv": torch.zeros(batch_size, self.conv_size - 1, self.dim, device=device, dtype=dtype),
            # raw q and k projections of the last 2^L - 1 tokens, oldest first: (B, 2, H, 2^L - 1, d)
            "qk_hist": torch.zeros(batch_size, 2, self.num_heads, hist, self.head_dim, device=device, dtype=dtype),
            "S": la.S,
            "z": la.z,
        }

    def _step_constants(self, dtype) -> tuple:
        """What every decoding step reuses: ``Omega^T / b`` ``(H, d, m)``, the key exponent
        terms ``1 / (2 b^2)`` and ``shift + log sqrt(m)`` ``(H, 1)``, ``log sqrt(m)``, and the
        pyramid's window weights ``(L+1, 2^L)`` (:func:`~wersa.ops.causal_pyramid.pyramid_window_weights`).

        Without autograd they are cached until ``Omega`` or ``beta`` change (in-place updates
        bump a tensor's version; ``.to()`` gives new storage), so a step does no
        ``O(H m d)`` work besides its GEMMs; with autograd they are recomputed, so
        gradients reach ``beta``.
        """
        key = (dtype, self.omega.device, self.omega.data_ptr(), self.omega._version,
               self.beta.data_ptr(), self.beta._version, self.feature_map)
        cached = getattr(self, "_step_cache", None)
        if not torch.is_grad_enabled() and cached is not None and cached[0] == key:
            return cached[1]
        b = self.bandwidth.to(dtype)
        omega = self.omega.to(dtype)
        log_scale = 0.5 * math.log(self.num_features)
        omega_t = (omega / b.view(-1, 1, 1)).transpose(-1, -2).contiguous()  # (H, d, m)
        half_inv_b2 = (0.5 / (b * b)).view(-1, 1)
        key_shift = self._key_shift(dtype)
        key_offset = (key_shift.view(-1, 1) if key_shift is not None else torch.zeros_like(half_inv_b2)) + log_scale
        weights = pyramid_window_weights(self.levels, dtype=dtype, device=omega.device)
        consts = (omega_t, half_inv_b2, key_offset, log_scale, weights)
        if not torch.is_grad_enabled():
            self._step_cache = (key, consts)
        return consts

    def _step_inputs(self, x_t: Tensor) -> tuple:
        return (self._step_constants(compute_dtype(x_t.dtype)),)

    def _step(self, x_t: Tensor, state: dict[str, Tensor], constants: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        """One token: ``x_t (B, D)``; ``constants`` from :meth:`_step_constants`. Queries and
        keys go through the pyramid and the feature map together (one ``(B, 2, H, ., d)``
        tensor), so the per-token work is a handful of small GEMMs and elementwise ops,
        whatever the context length. One graph for ``torch.compile`` (:meth:`compile_step`)."""
        b, H, d = x_t.shape[0], self.num_heads, self.head_dim
        work = compute_dtype(x_t.dtype)
        omega_t, half_inv_b2, key_offset, log_scale, weights = constants
        qkv = self.qkv(x_t).view(b, 3, H, d)
        qk, v = qkv[:, :2], qkv[:, 2]  # (B, 2, H, d), (B, H, d)
        new = dict(state)
        window = torch.cat([state["conv"], x_t.unsqueeze(1)], dim=1)  # (B, K, D), newest last
        # The state stays contiguous, as init_state and prefill make it, so a compiled step's
        # input strides are the same at every token (no recompilation at the second token).
        new["conv"] = window[:, 1:].contiguous()
        if self.levels > 0:
            conv = (window * self.gate_conv.weight[:, 0, :].T).sum(1) + self.gate_conv.bias
            gains = torch.sigmoid(self.gate_mlp(conv)) * self.scale_weights  # (B, L+1)
            hist = torch.cat([state["qk_hist"], qk.unsqueeze(-2)], dim=-2)  # (B, 2, H, 2^L, d)
            new["qk_hist"] = hist[..., 1:, :].contiguous()
            # The pyramid output is a gain-weighted average of the window: (B, 1, 1, 1, 2^L) @ window.
            qk = ((gains.to(weights.dtype) @ weights).to(hist.dtype).view(b, 1, 1, 1, -1) @ hist).squeeze(-2)
        qk = qk.to(work)
        unit = qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        # Omega x^ per head as one (H, 2B, d) @ (H, d, m) product (a broadcast over B would copy Omega).
        e = torch.bmm(unit.permute(2, 0, 1, 3).reshape(H, 2 * b, d), omega_t).view(H, b, 2, -1)
        e_q, e_k = e[:, :, 0].transpose(0, 1), e[:, :, 1].transpose(0, 1)  # (B, H, m)
        if self.feature_map == "relu":
            phi_q, phi_k = torch.relu(e_q) * math.exp(-log_scale), torch.relu(e_k) * math.exp(-log_scale)
        else:
            # exp(Omega x^ - |x^|^2 / 2) / sqrt(m); queries shifted by their row max.
            phi_q = torch.exp(e_q - (e_q.amax(-1, keepdim=True) + log_scale))
            sq = (unit[:, 1] * unit[:, 1]).sum(-1, keepdim=True)  # |x / max(|x|, eps)|^2: 1 unless tiny
            phi_k = torch.exp(e_k - torch.addcmul(key_offset, sq, half_inv_b2))
        v = v.to(work)
        S = torch.addcmul(state["S"], phi_k.unsqueeze(-1), v.unsqueeze(-2))  # (B, H, m, d)
        z = state["z"] + phi_k
        pq = phi_q.unsqueeze(-2)  # (B, H, 1, m)
        y = (pq @ S) / ((pq @ z.unsqueeze(-1)) + self.eps)  # (B, H, 1, d)
        new["S"], new["z"] = S, z
        return self._merge_heads(y.to(x_t.dtype)).squeeze(1), new

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Parallel causal pass over a prompt that also returns the decoding state.

        Any padding pattern: the real tokens are compacted to the front, so the state is
        the one :meth:`step` reaches by skipping the padded tokens.
        """
        b, n, _ = x.shape
        state = self.init_state(b, x.device, x.dtype)
        if mask is None:
            lengths = torch.full((b,), n, device=x.device, dtype=torch.long)
            return self._prefill_right_padded(x, None, lengths, state)
        comp = compaction(mask)
        y, state = self._prefill_right_padded(gather_tokens(x, comp.perm), gather_tokens(mask, comp.perm),
                                              comp.lengths, state)
        return gather_tokens(y, comp.inverse), state

    def _prefill_right_padded(self, x: Tensor, mask: Tensor | None, lengths: Tensor,
                              state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`prefill` for a right-padded ``mask``; ``lengths``: real tokens per row ``(B,)``."""
        xm = x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)
        q, k, v = self._filtered_qkv(x, mask)
        if self._use_lean_core() and not torch.is_grad_enabled():
            work = compute_dtype(q.dtype)
            y, la = favor_attention_with_state(q.to(work), k.to(work), v.to(work), self.omega,
                                               self.bandwidth.to(work), key_mask=mask, eps=self.eps,
                                               chunk_size=self.chunk_size, block_size=self.block_size,
                                               key_shift=self._key_shift(work))
        else:
            phi_q, phi_k = self._features(q, True), self._features(k, False)
            y, la = causal_linear_attention(phi_q, phi_k, v.to(phi_q.dtype), key_mask=mask, eps=self.eps,
                                            chunk_size=self.chunk_size, return_state=True)
        y = self._merge_heads(y.to(x.dtype))
        # Buffers hold the last real inputs (zeros before the start), as stepping would leave them.
        if self.conv_size > 1:
            state["conv"], _ = _last_tokens(xm, lengths, self.conv_size - 1)
        hist = 2 ** self.levels - 1
        if hist:
            # The pyramid's history is the last 2^L - 1 raw projections: project only those tokens.
            tail, valid = _last_tokens(xm, lengths, hist)
            qk = self.qkv(tail)[..., : 2 * self.dim]  # (B, 2^L - 1, 2D)
            qk = qk.view(qk.shape[0], hist, 2, self.num_heads, self.head_dim).permute(0, 2, 3, 1, 4)
            # zeros before the start, bias or not; contiguous, as init_state and step make it
            state["qk_hist"] = (qk * valid[:, None, None, :, None].to(qk.dtype)).contiguous()
        state["S"], state["z"] = la.S.contiguous(), la.z.contiguous()  # as init_state makes them
        return y, state

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, levels={self.levels}, num_features={self.num_features}, "
                f"feature_map={self.feature_map!r}, conv_size={self.conv_size}, recompute={self.recompute}"
                + (", recompute_gates=True" if self.recompute_gates else ""))
