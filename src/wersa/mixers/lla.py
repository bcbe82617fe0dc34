"""Local Linear Attention (LLA): attention as a local linear regression at test time.

Reference: Zuo, Yin, Zeng, Li, Zhu, Wang, "Local Linear Attention: An Optimal
Interpolation of Linear and Softmax Attention For Test-Time Regression", arXiv 2510.01450;
naive reference ``flashlla/ops/naive.py::lla_forward_naive`` (``Yifei-Zuo/FlashLLA``).

**Not a linear-time mixer** (``linear_time=False``): time ``O(N^2 d^2 + N d^3)`` and memory
``O(N^2 + N d^2)`` per head, more than softmax attention. It is provided so the
expressiveness / cost trade-off can be measured next to the linear mixers.

Per head, with scale ``s = d^-1/2`` and sums over the keys ``j`` query ``i`` may see
(``j <= i`` when causal, real keys only)::

    w_ij  = softmax_j(s q_i . k_j)                  (any per-row factor cancels below)
    w_i   = sum_j w_ij                              (= 1 for a row with a key)
    mu_i  = sum_j w_ij (k_j - q_i)                                         (d,)
    S_i   = sum_j w_ij (k_j - q_i)(k_j - q_i)^T + lambda w_i I               (d, d)
    rho_i = S_i^-1 mu_i                             (solve in float32/64)
    delta_i = w_i - mu_i . rho_i   (+ delta_eps * sign(delta_i))
    o_i   = sum_j w_ij (1 - rho_i . (k_j - q_i)) / delta_i  v_j

The effective weights sum to one (affine, not convex: some can be negative).
``lambda -> inf`` gives softmax attention. No ``O(N^2 d)`` tensor is formed (neither
``k_j - q_i`` nor ``w_ij k_j``; a test bounds the largest tensor of the forward and
backward passes): ``mu_i = (w k)_i - w_i q_i``, ``S_i = (sum_j w_ij k_j k_j^T) - (w k)_i q_i^T
- q_i (w k)_i^T + w_i q_i q_i^T + lambda w_i I`` with ``sum_j w_ij k_j k_j^T`` the product of
``w`` and the ``(m, d^2)`` outer products ``k_j k_j^T``, and
``o_i = [(1 + rho_i . q_i) (w v)_i - sum_j w_ij (rho_i . k_j) v_j] / delta_i``.

Defaults (the reference's): ``ridge_lambda = 0.01``, ``qk_scale = d^-1/2``,
``delta_eps = 1e-12``. Bidirectional mode applies the same estimator over every real
key (the reference is causal only). Recurrent decoding keeps a KV cache
(``constant_state=False``) and evaluates the newest query against it exactly.

Pitfalls and how they are handled: ``S_i`` is ill-conditioned for early queries
(few keys) -- the ridge ``lambda w_i I`` keeps it invertible, and the sums and the solve run in
float64 whatever the input dtype (float32 loses ~3 digits to the conditioning); ``delta_i`` can be
near 0 -- a sign-preserving ``delta_eps`` is added; a row with no visible key (a
left-padded position) would make ``S_i = 0`` singular and poison gradients with NaN
-- such rows solve ``I rho = 0`` and output zero.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..ops.softmax_attention import attention_bias
from .base import Capabilities, Mixer
from .registry import register_mixer


def local_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_mask: Tensor | None = None,
    ridge_lambda: float = 0.01, qk_scale: float | None = None, delta_eps: float = 1e-12,
) -> Tensor:
    """LLA for ``q (B, H, n, d)``, ``k, v (B, H, m, d)`` (bottom-right causal alignment).

    key_mask: ``(B, m)`` bool, ``True`` = real key. Returns ``(B, H, n, d)`` in ``q.dtype``;
    computed in float64 whatever the input dtype: ``S_i`` has condition number about
    ``|k - q|^2 / lambda`` (~1e3 at the defaults), so float32 sums lose three digits and
    padded / unpadded or cached / parallel evaluations would differ by ~1e-4.
    """
    out_dtype = q.dtype
    cd = torch.float64
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    d = q.shape[-1]
    scale = d ** -0.5 if qk_scale is None else qk_scale
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, n, m)
    allowed = attention_bias(q.shape[-2], k.shape[-2], causal=causal, key_mask=key_mask,
                             device=q.device, dtype=cd)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    has_key = torch.isfinite(lse)  # (B, H, n, 1)
    w = torch.exp(scores - torch.where(has_key, lse, torch.zeros_like(lse)))  # rows sum to 1 or 0
    omega = w.sum(-1, keepdim=True)  # (B, H, n, 1)
    wk = w @ k  # (B, H, n, d)
    mu = wk - omega * q
    # sum_j w_ij k_j k_j^T as one product with the (m, d^2) outer products: O(N^2 d^2) time,
    # O(N d^2) memory. (A three-operand einsum forms the (n, m, d) product w_ij k_j first.)
    kk = (w @ (k.unsqueeze(-1) * k.unsqueeze(-2)).flatten(-2)).unflatten(-1, (d, d))
    qwk = q.unsqueeze(-1) * wk.unsqueeze(-2)  # q_i (wk)_i^T
    eye = torch.eye(d, dtype=cd, device=q.device)
    sigma = (kk - qwk - qwk.transpose(-1, -2)
             + omega.unsqueeze(-1) * (q.unsqueeze(-1) * q.unsqueeze(-2))
             + ridge_lambda * omega.unsqueeze(-1) * eye)
    sigma = torch.where(has_key.unsqueeze(-1), sigma, eye)  # empty rows: a harmless system
    rho = torch.linalg.solve(sigma, mu.unsqueeze(-1)).squeeze(-1)  # (B, H, n, d)
    delta = omega - (mu * rho).sum(-1, keepdim=True)
    sign = torch.where(delta >= 0, torch.ones_like(delta), -torch.ones_like(delta))
    delta = delta + delta_eps * sign
    delta = torch.where(has_key, delta, torch.ones_like(delta))
    wv = w @ v
    rho_k = w * (rho @ k.transpose(-1, -2))  # w_ij (rho_i . k_j)
    out = ((1 + (rho * q).sum(-1, keepdim=True)) * wv - rho_k @ v) / delta
    return out.to(out_dtype)


def local_linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, ridge_lambda: float = 0.01,
    qk_scale: float | None = None, delta_eps: float = 1e-12,
) -> Tensor:
    """The literal per-query formulas (``k_j - q_i`` formed explicitly), ``(B, H, n, d)``, n = m."""
    Bsz, H, n, d = q.shape
    scale = d ** -0.5 if qk_scale is None else qk_scale
    out = torch.zeros_like(v)
    eye = torch.eye(d, dtype=q.dtype)
    for i in range(n):
        j_end = i + 1 if causal else n
        kj, vj = k[:, :, :j_end], v[:, :, :j_end]
        s = (kj @ q[:, :, i].unsqueeze(-1)).squeeze(-1) * scale  # (B, H, j)
        w = torch.exp(s - s.max(-1, keepdim=True).values)
        diff = kj - q[:, :, i:i + 1]  # (B, H, j, d)
        omega = w.sum(-1)
        mu = (w.unsqueeze(-1) * diff).sum(2)
        sigma = torch.einsum("bhj,bhjd,bhje->bhde", w, diff, diff) + ridge_lambda * omega[..., None, None] * eye
        rho = torch.linalg.solve(sigma, mu)
        delta = omega - (mu * rho).sum(-1)
        delta = delta + delta_eps * torch.where(delta >= 0, 1.0, -1.0)
        eff = w * (1 - (diff * rho.unsqueeze(2)).sum(-1)) / delta.unsqueeze(-1)
        out[:, :, i] = (eff.unsqueeze(-1) * vj).sum(2)
    return out


class LLACache(NamedTuple):
    """KV cache: k, v ``(B, H, t, d)``; valid ``(B, t)`` bool (False for padding steps)."""

    k: Tensor
    v: Tensor
    valid: Tensor


@register_mixer
class LocalLinearAttention(Mixer):
    """LLA with its own q/k/v/out projections: ``(B, N, D) -> (B, N, D)``. Quadratic."""

    renamed_parameters = {"out.": "out_proj."}

    example_options = ({"ridge_lambda": 1.0},)
    capabilities = Capabilities(
        name="lla", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=False, linear_time=False,
        summary="local linear attention: per-query weighted linear regression (ridge solve); "
                "quadratic, costlier than softmax attention; KV-cache decoding",
        reference="Zuo et al., Local Linear Attention: An Optimal Interpolation of Linear and "
                  "Softmax Attention For Test-Time Regression, arXiv 2510.01450",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        ridge_lambda: float = 0.01, qk_scale: float | None = None, delta_eps: float = 1e-12,
        qkv_bias: bool = True, out_bias: bool = True, bias: bool | None = None,
    ):
        super().__init__(dim, num_heads, causal)
        name = self.capabilities.name
        if not ridge_lambda > 0:
            raise ValueError(f"{name}: ridge_lambda must be > 0 (it keeps the solve well posed), got {ridge_lambda}")
        if qk_scale is not None and not qk_scale > 0:
            raise ValueError(f"{name}: qk_scale must be > 0 or None, got {qk_scale}")
        if not delta_eps >= 0:
            raise ValueError(f"{name}: delta_eps must be >= 0, got {delta_eps}")
        self.ridge_lambda, self.qk_scale, self.delta_eps = float(ridge_lambda), qk_scale, float(delta_eps)
        if bias is not None:  # 0.1.0's one switch for both projections
            warnings.warn("lla: option 'bias' was split into 'qkv_bias' and 'out_bias'; 'bias' sets both",
                          FutureWarning, stacklevel=2)
            qkv_bias = out_bias = bool(bias)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, n, D)`` -> q, k, v ``(B, H, n, d)``."""
        Bsz, n, _ = x.shape
        return tuple(self.qkv(x).reshape(Bsz, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4))

    def _lla(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_mask: Tensor | None) -> Tensor:
        return local_linear_attention(q, k, v, causal=causal, key_mask=key_mask, ridge_lambda=self.ridge_lambda,
                                      qk_scale=self.qk_scale, delta_eps=self.delta_eps)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        Bsz, n, _ = x.shape
        q, k, v = self._heads(x)
        y = self._lla(q, k, v, self.causal, mask)
        return self.out_proj(y.transpose(1, 2).reshape(Bsz, n, self.dim))

    # ---------------------------------------------------------------- decoding
    def _init_state(self, batch_size: int, device, dtype) -> LLACache:
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return LLACache(empty, empty.clone(), torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    def _step(self, x_t: Tensor, state: LLACache) -> tuple[Tensor, LLACache]:
        if not isinstance(state, LLACache):
            raise TypeError(f"lla: state must be the LLACache from init_state/prefill, got {type(state).__name__}")
        q, k, v = self._heads(x_t.unsqueeze(1))
        ks, vs = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
        valid = torch.cat([state.valid, state.valid.new_ones(x_t.shape[0], 1)], 1)
        key_mask = None if bool(valid.all()) else valid
        y = self._lla(q, ks, vs, False, key_mask)  # the newest query sees the whole cache
        return self.out_proj(y.transpose(1, 2).reshape(x_t.shape[0], self.dim)), LLACache(ks, vs, valid)

    def _select_state(self, keep: Tensor, new: LLACache, old: LLACache) -> LLACache:
        # The cache grows either way; a padding step's key is marked invalid instead.
        valid = new.valid.clone()
        valid[:, -1] = keep
        return LLACache(new.k, new.v, valid)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, ridge_lambda={self.ridge_lambda}, qk_scale={self.qk_scale}, "
                f"delta_eps={self.delta_eps}")
