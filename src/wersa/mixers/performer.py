"""Performer (FAVOR+): softmax attention approximated with positive random features.

Reference: Choromanski et al., "Rethinking Attention with Performers", ICLR 2021,
arXiv 2009.14794. Reference code: lucidrains ``performer-pytorch`` 1.1.4.

Math (per head, head width ``d``, ``m`` random features)::

    q~ = q d^{-1/4},  k~ = k d^{-1/4}               (so q~ . k~ = q . k / sqrt(d))
    phi(x) = m^{-1/2} exp(W x - |x|^2 / 2)         (feature_map="softmax", FAVOR+)
    phi(x) = m^{-1/2} (relu(W x) + 1e-3)           (feature_map="relu", generalized attention)
    W in R^{m x d}: stacked orthogonal blocks, rows with Gaussian norms, so that
    E[phi(q~)^T phi(k~)] = exp(q . k / sqrt(d))

    bidirectional: y_i = phi(q_i)^T S / (phi(q_i)^T z + eps),  S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j)
    causal:        the same with S_i, z_i summed over j <= i (chunked, O(N c (m + d) + N m d))
    recurrent:     S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t)   (state O(m d) per head)

Defaults: ``num_features=256``, ``feature_map="softmax"``, one ``(m, d)`` projection shared
by all heads (as in the reference code), ``chunk_size=128``, ``eps=1e-8``.

Memory (``recompute=True``, the default): softmax features go through WERSA's
memory-lean core (:func:`~wersa.ops.favor_attention.favor_attention` with
``normalize=False`` and ``key_shift="max"``), bidirectional and causal: features are
made block by block and recomputed in the backward pass, never stored as
``(B, H, N, m)`` tensors; the key max is kept as a running max across blocks
(bidirectionally, one max per sequence; causally, each query's running max, below).
Values and gradients equal the plain autograd path (``recompute=False``; a test
compares them). Prefill without autograd takes the core too.

Stabilisers. ``exp`` may overflow, so implementations shift exponents by a max:

* queries are shifted by their own row max: one constant per query, which
  multiplies numerator and denominator alike and cancels (up to ``eps``);
* bidirectional keys are shifted by the max over the *real* keys of the sequence
  (per batch row and head). A bidirectional output may depend on every real key,
  so this leaks nothing, and padded keys never enter it;
* causal keys are shifted by a *running* max: query ``i`` uses the max exponent over
  the keys ``j <= i`` it may see, carried with the state ``(S, z, M)`` and rescaling
  ``(S, z)`` by ``exp(M_old - M_new)`` when it grows, chunk by chunk and in ``step``
  (:mod:`wersa.ops.running_max_attention`). A shift shared by the whole sequence would
  be a max over keys a query may not see (the defect below). Unshifted keys are not
  safe: the exponent ``w.x - |x|^2 / 2`` is bounded above only by ``max |w|^2 / 2``
  (92 for ``d = 128``, beyond float32's 88.7: overflow, then NaN), and keys of norm 40
  give exponents near ``-800``, which underflow to 0 and silently return a wrong
  output. With the running max, the last token of a causal pass equals the
  bidirectional output of that token (the same shift, the same ``eps`` rule).
  Half-precision inputs are computed in float32. The ReLU feature map needs no shift.

Pitfalls of the reference code and how this file avoids them:

* ``softmax_kernel(..., is_query=False)`` subtracts a max over the whole sequence
  *and then adds eps = 1e-4* to the features, so the shift does not cancel: in
  causal mode a large future key changes past outputs (prefix invariance fails
  by ~1 with one future key scaled x8). Here causal keys carry no shift.
* Its ``SelfAttention(mask=...)`` only zeroes padded *values*: padded keys still
  enter the normaliser ``z`` and the key stabiliser, so real outputs move with
  the padding. Here padded keys' features are zeroed before any sum and
  excluded from the key max, so right *and* left padding leave real outputs
  unchanged (in causal mode too: features do not depend on positions).
* Features are drawn from ``torch.randn`` on the global RNG. Here the projection
  is a persistent buffer drawn from a ``torch.Generator`` seeded by
  ``feature_seed``: saved with the model, identical across runs.
* No generation cache. Here ``init_state`` / ``step`` / ``prefill`` carry ``(S, z, M)``.

Feature redraw: ``redraw_interval=k`` draws a fresh projection (seed
``feature_seed`` and the number of earlier draws, so it is reproducible) every
``k`` forward calls *in training mode only*; evaluation never redraws.
Redrawing changes the function; do not redraw between ``prefill`` and ``step``.
After ``module.to(torch.bfloat16)`` the projection buffer is stored rounded to
bfloat16 (still a valid random draw); features and sums are computed in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops.favor_attention import favor_attention, favor_attention_with_state
from ..ops.feature_maps import relu_features, softmax_kernel_features
from ..ops.heads import compute_dtype
from ..ops.linear_attention import (
    causal_linear_attention,
    linear_attention,
    linear_attention_step,
    LinearAttentionState,
)
from ..ops.running_max_attention import (
    RunningMaxState,
    running_max_attention,
    running_max_attention_step,
    running_max_init_state,
)
from .base import Capabilities, Mixer
from .random_features import RandomFeatureMixin, check_random_feature_options
from .registry import register_mixer

KERNELS = ("softmax", "relu")  # the feature maps
FEATURE_MAPS = KERNELS
RELU_EPS = 1e-3  # added to ReLU features (as in the reference code) so no denominator is 0


def favor_features(
    x: Tensor, omega: Tensor, *, kernel: str, is_query: bool,
    key_mask: Tensor | None = None, shift_keys: bool = False,
) -> Tensor:
    """Random features of queries or keys.

    Args:
        x: ``(B, H, N, d)`` inputs, already scaled by ``d^{-1/4}``.
        omega: ``(m, d)`` projection.
        kernel: ``"softmax"`` (positive features) or ``"relu"``.
        is_query: queries are shifted by their own row max (cancels in the ratio).
        key_mask: ``(B, N)`` bool, ``True`` = real key; padded keys get zero features.
        shift_keys: keys are shifted by the max exponent over real keys of each
            ``(batch, head)``. Only for bidirectional attention (see module docstring).
    Returns:
        ``(B, H, N, m)`` non-negative features (zero at padded keys).
    """
    m = omega.shape[0]
    if kernel == "relu":
        phi = relu_features(x, omega) + RELU_EPS / math.sqrt(m)
    elif is_query:
        phi = softmax_kernel_features(x, omega, stabilize=True)
    elif not shift_keys:
        phi = softmax_kernel_features(x, omega, stabilize=False)
    else:
        exponent = x @ omega.transpose(-1, -2) - 0.5 * (x * x).sum(-1, keepdim=True)
        valid = exponent if key_mask is None else exponent.masked_fill(
            ~key_mask[:, None, :, None], float("-inf"))
        # Detached, like the query stabiliser: a constant shift (it cancels in the ratio up to eps).
        shift = valid.amax(dim=(-1, -2), keepdim=True).detach()
        # A sequence without any real key has shift -inf; its features are zeroed below.
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        # Exponentiate the masked exponent: a padded key far above the real keys' max
        # would otherwise overflow to inf, and inf * 0 (the mask below) is NaN.
        phi = torch.exp(valid - shift) * (1.0 / math.sqrt(m))
    if key_mask is not None and not is_query:
        phi = phi * key_mask[:, None, :, None].to(phi.dtype)
    return phi


def favor_key_log_features(k: Tensor, omega: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Key exponents ``w.k - |k|^2 / 2``: the log of the softmax-kernel key features times ``sqrt(m)``.

    ``k``: ``(B, H, N, d)`` scaled keys; ``key_mask``: ``(B, N)``; returns ``(B, H, N, m)``,
    ``-inf`` at padded keys (their features are 0). The ``m^{-1/2}`` factor is left to the
    caller: folded into ``log m`` here, it would be added at the exponent's magnitude
    (~``|k|^2 / 2``) and round differently from the bidirectional features.
    """
    log_phi = k @ omega.transpose(-1, -2) - 0.5 * (k * k).sum(-1, keepdim=True)
    if key_mask is not None:
        log_phi = log_phi.masked_fill(~key_mask[:, None, :, None], float("-inf"))
    return log_phi


def _check_common(name: str, num_features: int, feature_seed: int, redraw_interval: int | None,
                  eps: float) -> None:
    check_random_feature_options(name, num_features, feature_seed, redraw_interval)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{name}: eps must be a non-negative number, got {eps!r}")


@register_mixer
class Performer(RandomFeatureMixin, Mixer):
    """FAVOR+ attention: ``(B, N, D) -> (B, N, D)`` in ``O(N m d)`` time.

    Args:
        dim: model width ``D``; num_heads: ``H`` (head width ``d = D / H``).
        causal: autoregressive form (chunked prefix sums; recurrent ``step``).
        num_features: random features ``m``.
        feature_map: ``"softmax"`` (FAVOR+) or ``"relu"`` (generalized attention).
        feature_seed: seed of the projection's generator.
        redraw_interval: redraw the projection every this many training forward calls
            (``None`` = never).
        chunk_size: tokens per chunk of the causal form.
        eps: added to the denominator.
        qkv_bias, out_bias: biases of the input / output projections.
        recompute: softmax features (bidirectional and causal) through the memory-lean core
            (recomputed in the backward pass, never stored); ``False``: plain autograd.
        block_size: tokens whose features the recompute path materialises at a time.
    """

    renamed_options = {"kernel": "feature_map"}
    renamed_parameters = {"to_out.": "out_proj."}

    example_options = (
        {"chunk_size": 4, "num_features": 32, "block_size": 8},
        {"feature_map": "relu", "chunk_size": 16, "num_features": 16}, {"recompute": False},
    )
    capabilities = Capabilities(
        name="performer", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="FAVOR+ positive orthogonal random features (softmax or ReLU feature map)",
        reference="Choromanski et al., Rethinking Attention with Performers, arXiv 2009.14794",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        num_features: int = 256, feature_map: str = "softmax", feature_seed: int = 0,
        redraw_interval: int | None = None, chunk_size: int = 128, eps: float = 1e-8,
        qkv_bias: bool = False, out_bias: bool = True, recompute: bool = True, block_size: int = 2048,
    ):
        super().__init__(dim, num_heads, causal)
        name = self.capabilities.name
        _check_common(name, num_features, feature_seed, redraw_interval, eps)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"{name}: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"{name}: chunk_size must be a positive integer, got {chunk_size!r}")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise ValueError(f"{name}: block_size must be a positive integer, got {block_size!r}")
        self.recompute = bool(recompute)
        self.block_size = block_size
        self.num_features = num_features
        self.feature_map = feature_map
        self.feature_seed = feature_seed
        self.redraw_interval = redraw_interval
        self.chunk_size = chunk_size
        self.eps = float(eps)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        self._init_features()

    @property
    def _lean(self) -> bool:
        """Softmax features through the memory-lean core (class docstring)."""
        return self.recompute and self.feature_map == "softmax"

    @property
    def _running_max(self) -> bool:
        """Causal softmax features shift keys by the running max (module docstring)."""
        return self.causal and self.feature_map == "softmax"

    # ------------------------------------------------------------- helpers
    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D)`` -> q, k, v ``(B, H, N, d)`` in the compute dtype, q and k scaled by ``d^{-1/4}``."""
        b, n, _ = x.shape
        cd = compute_dtype(x.dtype)
        qkv = self.to_qkv(x).to(cd).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scale = self.head_dim ** -0.25
        return q * scale, k * scale, v

    def features(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Query features and key features ``(B, H, N, m)`` of scaled ``q``, ``k`` ``(B, H, N, d)``.

        With the running-max shift (causal, softmax) the keys are returned as exponents
        (:func:`favor_key_log_features`, ``-inf`` at padded keys), shifted per query by the
        attention op, and the query features carry the keys' ``m^{-1/2}``.
        """
        omega = self.projection_matrix.to(q.dtype)
        phi_q = favor_features(q, omega, kernel=self.feature_map, is_query=True)
        if self._running_max:  # the keys' m^{-1/2} rides on the queries
            return phi_q * self.num_features ** -0.5, favor_key_log_features(k, omega, key_mask)
        phi_k = favor_features(k, omega, kernel=self.feature_map, is_query=False, key_mask=key_mask,
                               shift_keys=not self.causal)
        return phi_q, phi_k

    def _head_projections(self, dtype: torch.dtype) -> Tensor:
        """The shared ``(m, d)`` projection as the core's per-head ``(H, m, d)`` (a view, no copy)."""
        return self.projection_matrix.to(dtype).expand(self.num_heads, -1, -1)

    def _merge(self, out: Tensor, dtype: torch.dtype) -> Tensor:
        """``(B, H, N, d)`` -> output projection ``(B, N, D)``."""
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d).to(dtype))

    def _causal(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, return_state: bool):
        if self._running_max:
            return running_max_attention(phi_q, phi_k, v, eps=self.eps, chunk_size=self.chunk_size,
                                         return_state=return_state)
        return causal_linear_attention(phi_q, phi_k, v, eps=self.eps, chunk_size=self.chunk_size,
                                       return_state=return_state)

    # ------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        self._maybe_redraw()
        q, k, v = self._heads(x)
        if self._lean:
            out = favor_attention(q, k, v, self._head_projections(q.dtype), q.new_ones(self.num_heads),
                                  causal=self.causal, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size,
                                  block_size=self.block_size, key_shift="max", normalize=False)
            return self._merge(out, x.dtype)
        phi_q, phi_k = self.features(q, k, mask)
        if self.causal:
            out = self._causal(phi_q, phi_k, v, return_state=False)
        else:
            out = linear_attention(phi_q, phi_k, v, eps=self.eps)
        return self._merge(out, x.dtype)

    # ----------------------------------------------------------- recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        # A dict (not a NamedTuple) so the base class can select it per sequence.
        # M: the running max of key log-features (-inf before the first key; unused by ReLU features).
        st = running_max_init_state(batch_size, self.num_heads, self.num_features, self.head_dim,
                                    device, compute_dtype(dtype))
        return {"S": st.S, "z": st.z, "M": st.M}

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = self._heads(x_t.unsqueeze(1))  # (B, H, 1, d)
        phi_q, phi_k = self.features(q, k, None)
        S, z = state["S"].to(q.dtype), state["z"].to(q.dtype)
        if self._running_max:
            prev = RunningMaxState(S, z, state["M"].to(q.dtype))
            out, new = running_max_attention_step(phi_q[:, :, 0], phi_k[:, :, 0], v[:, :, 0], prev, eps=self.eps)
            M = new.M
        else:
            out, new = linear_attention_step(phi_q[:, :, 0], phi_k[:, :, 0], v[:, :, 0],
                                             LinearAttentionState(S, z), eps=self.eps)
            M = state["M"]
        y = self._merge(out.unsqueeze(2), x_t.dtype)[:, 0]
        return y, {"S": new.S, "z": new.z, "M": M}

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Chunked causal pass; padded keys (left or right) are left out of the state."""
        q, k, v = self._heads(x)
        if self._lean and not torch.is_grad_enabled():
            out, final = favor_attention_with_state(
                q, k, v, self._head_projections(q.dtype), q.new_ones(self.num_heads), key_mask=mask, eps=self.eps,
                chunk_size=self.chunk_size, block_size=self.block_size, key_shift="max", normalize=False)
            # The core's sums hold the keys' m^{-1/2}; the recurrent form carries it on the queries.
            root_m = math.sqrt(self.num_features)
            return self._merge(out, x.dtype), {"S": final.S * root_m, "z": final.z * root_m, "M": final.M}
        phi_q, phi_k = self.features(q, k, mask)
        out, final = self._causal(phi_q, phi_k, v, return_state=True)
        M = final.M if self._running_max else self.init_state(x.shape[0], x.device, x.dtype)["M"]
        return self._merge(out, x.dtype), {"S": final.S, "z": final.z, "M": M}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_features={self.num_features}, feature_map={self.feature_map!r}, "
                f"feature_seed={self.feature_seed}, redraw_interval={self.redraw_interval}, "
                f"recompute={self.recompute}")
