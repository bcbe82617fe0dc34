"""Fused, memory-lean FAVOR+ attention: features and linear attention in one autograd node.

Computes, per head ``h`` with bandwidth ``b_h`` and projection ``Omega_h`` (``m x d``)::

    q^ = normalize(q) / b_h,  k^ = normalize(k) / b_h
    phi(x^) = exp(Omega_h x^ - |x^|^2 / 2) / sqrt(m)        (queries also shifted by their row max)
    y_i = phi(q^_i)^T S / (phi(q^_i)^T z + eps)              (S, z summed over all real keys,
                                                              or over keys j <= i when causal)

With ``normalize=False`` the inputs are only scaled (``x^ = x / b_h``: Performer's FAVOR+,
whose ``q`` and ``k`` arrive already scaled by ``d^{-1/4}``, passes ``b = 1``), and with
``key_shift="max"`` (bidirectional only) the key exponents are shifted by their max over
the real keys of each (batch row, head), kept as a running max while the key blocks go
by (the sums so far are rescaled when it grows), as Performer's plain path does.

This is exactly :func:`favor_attention_reference` (the composition of
``F.normalize``, :func:`~wersa.ops.feature_maps.softmax_kernel_features` and
:func:`~wersa.ops.linear_attention.linear_attention` /
:func:`~wersa.ops.linear_attention.causal_linear_attention`), with the same
gradients. What changes is the cost:

* The ``(B, H, N, m)`` feature tensors are never stored. The sequence is processed
  in blocks of ``block_size`` tokens; the backward pass recomputes each block's
  features (one extra ``N d m`` product per side, cheap next to what it saves:
  plain autograd keeps several ``(B, H, N, m)`` tensors alive, 1 GiB each at 128k
  tokens, 8 heads and ``m = 256``).
* Normalisation and bandwidth live inside the node too, so none of their
  ``(B, H, N, d)`` intermediates are saved: the node keeps its inputs, its output
  and, causally, one ``(m, d + 1)`` state per block.
* Bidirectional: two passes, key sums ``[S | z]`` then queries; the backward pass
  mirrors them (queries first, which yields ``dL/d[S | z]``, then keys).
* Causal: inside a block, the chunked form of
  :func:`~wersa.ops.linear_attention.causal_linear_attention` (masked
  ``chunk x chunk`` products plus an exclusive prefix over chunk states), batched
  over the block's chunks; across blocks, the running state is carried forward
  and its gradient carried backward (blocks in reverse, the state entering each
  block saved in the forward pass).
* The denominator rides along as a ones column appended to ``v`` (per block, not
  a copy of the whole ``v``), so numerator and denominator come from the same GEMM.

The query stabiliser is detached (as in the reference), so it contributes no
gradient term; keys are shifted only by an optional detached constant per head
(``key_shift``, see :func:`~wersa.ops.feature_maps.normalized_key_shift`). ``Omega`` is a constant (a buffer): no
gradient flows to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .feature_maps import softmax_kernel_features
from .linear_attention import LinearAttentionState, causal_linear_attention, linear_attention

_NORM_EPS = 1e-6  # F.normalize's eps, as used by the reference


def _scaled_inputs(x: Tensor, inv_b: Tensor, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """``x^ = normalize(x) / b`` (or ``x / b``) and the clamped norm (``None`` without normalisation)."""
    if not normalize:
        return x * inv_b, None
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return x / norm * inv_b, norm


def _block_exponents(x: Tensor, omega_t: Tensor, inv_b: Tensor, is_query: bool, offsets, normalize: bool = True,
                     key_mask: Tensor | None = None):
    """The feature exponents of one block, shifted by ``offsets`` (``(query, key)``, see ``_offsets``).

    ``(B, H, T, d) -> e (B, H, T, m)`` plus what the backward needs (``x^`` and the clamped norm).
    ``key_mask`` ``(B, T)``: padded keys' exponents are -inf (features 0; a padded key far
    above the shift would otherwise give inf, and inf * 0 = NaN)."""
    xn, norm = _scaled_inputs(x, inv_b, normalize)
    e = xn @ omega_t  # (B, H, T, m), shifted in place: one (T, m) buffer per block
    if is_query:
        # The row max of (e - |x^|^2/2) is max(e) - |x^|^2/2: the |x^|^2 term cancels.
        shift = e.amax(-1, keepdim=True) + offsets[0]
    else:
        shift = 0.5 * (xn * xn).sum(-1, keepdim=True) + offsets[1]
    e.sub_(shift)
    if key_mask is not None and not is_query:
        e.masked_fill_(~key_mask[:, None, :, None], float("-inf"))
    return e, xn, norm


def _block_features(x: Tensor, omega_t: Tensor, inv_b: Tensor, is_query: bool, offsets, normalize: bool = True,
                    key_mask: Tensor | None = None):
    """``exp`` of :func:`_block_exponents`: ``phi (B, H, T, m)``, ``x^`` and the clamped norm."""
    e, xn, norm = _block_exponents(x, omega_t, inv_b, is_query, offsets, normalize, key_mask)
    return e.exp_(), xn, norm


def _features_backward(g_e: Tensor, xn: Tensor, norm: Tensor, inv_b: Tensor, omega: Tensor):
    """Gradient through ``e = x^ Omega^T - |x^|^2/2`` and ``x^ = normalize(x) / b``.

    Returns ``g_x`` ``(B, H, T, d)`` and ``g_b`` per head ``(H,)``.
    """
    g_xn = g_e @ omega - g_e.sum(-1, keepdim=True) * xn  # (B, H, T, d)
    # x^ = u / b  =>  dL/db = -sum(g_xn * x^) / b  (summed per head).
    g_b = -(g_xn * xn).sum(dim=(0, 2, 3)) * inv_b.view(-1)
    g_u = g_xn * inv_b
    if norm is None:  # x^ = x / b: no normalisation to differentiate through
        return g_u, g_b
    u = xn / inv_b
    # u = x / max(|x|, eps): below eps the norm is a constant (clamp), as in F.normalize.
    radial = (u * g_u).sum(-1, keepdim=True) * (norm > _NORM_EPS).to(u.dtype)
    return (g_u - u * radial) / norm, g_b


def _offsets(omega: Tensor, key_shift: Tensor | None) -> tuple:
    """``(query offset, key offset)`` subtracted from the exponents: ``log sqrt(m)``, plus the keys' shift
    (``(H,)`` per head, or ``(B, H)`` per batch row and head)."""
    log_scale = 0.5 * math.log(omega.shape[-2])
    if key_shift is None:
        return log_scale, log_scale
    if key_shift.dim() == 2:
        return log_scale, key_shift.detach().to(omega.dtype)[:, :, None, None] + log_scale
    return log_scale, key_shift.detach().to(omega.dtype).view(1, -1, 1, 1) + log_scale


def _ones_column(v: Tensor) -> Tensor:
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


def _output_grad(gy: Tensor, y: Tensor, den: Tensor) -> Tensor:
    """``y = num / den``: gradient w.r.t. ``[num | den - eps]`` as one ``(.., d + 1)`` tensor."""
    return torch.cat([gy / den, -(gy * y).sum(-1, keepdim=True) / den], dim=-1)


def _rows(mask: Tensor | None, s: int, t: int) -> Tensor | None:
    """Tokens ``s:t`` of a ``(B, N)`` mask (``None`` stays ``None``)."""
    return None if mask is None else mask[:, s:t]


def _blocks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ----------------------------------------------------------------- bidirectional
def _running_max_key_sums(k, v, omega_t, inv_b, key_mask, block, log_scale, normalize):
    """``[S | z]`` with keys shifted by their max exponent over real keys per (batch, head), in one pass.

    Each block's exponents are shifted by the max so far; when a block raises it, the sums
    so far are rescaled by ``exp(old - new)`` (as in online softmax). Returns the sums and
    the final max ``(B, H)`` (0 where a row has no real key: its features are all 0).
    """
    B, H, N, d = v.shape
    kv = v.new_zeros(B, H, omega_t.shape[-1], d + 1)
    run = v.new_full((B, H, 1, 1), float("-inf"))
    for s, t in _blocks(N, block):
        e, _, _ = _block_exponents(k[:, :, s:t], omega_t, inv_b, False, (0.0, 0.0), normalize,
                                   _rows(key_mask, s, t))
        new = torch.maximum(run, e.amax(dim=(-1, -2), keepdim=True))
        safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
        # exp(-inf - x) = 0: padded keys and rows without real keys so far add nothing.
        kv.mul_(torch.exp(run - safe))
        kv += e.sub_(safe + log_scale).exp_().transpose(-1, -2) @ _ones_column(v[:, :, s:t])
        run = new
    return kv, torch.where(torch.isfinite(run), run, torch.zeros_like(run))[:, :, 0, 0]


def _bidir_forward(q, k, v, omega_t, inv_b, key_mask, eps, block, offsets, normalize=True, key_max=False):
    B, H, N, d = v.shape
    if key_max:
        kv, shift = _running_max_key_sums(k, v, omega_t, inv_b, key_mask, block, offsets[0], normalize)
        offsets = (offsets[0], shift[:, :, None, None] + offsets[0])
    else:
        shift = None
        kv = v.new_zeros(B, H, omega_t.shape[-1], d + 1)  # [S | z]
        for s, t in _blocks(N, block):
            phi_k, _, _ = _block_features(k[:, :, s:t], omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
            kv += phi_k.transpose(-1, -2) @ _ones_column(v[:, :, s:t])
    y = v.new_empty(B, H, N, d)
    den = v.new_empty(B, H, N, 1)
    for s, t in _blocks(N, block):
        phi_q, _, _ = _block_features(q[:, :, s:t], omega_t, inv_b, True, offsets, normalize)
        out = phi_q @ kv
        den[:, :, s:t] = out[..., d:] + eps
        torch.div(out[..., :d], den[:, :, s:t], out=y[:, :, s:t])
    return y, den, kv, offsets


def _bidir_backward(gy, q, k, v, omega, omega_t, inv_b, key_mask, y, den, kv, block, offsets, normalize=True):
    N, d = v.shape[-2], v.shape[-1]
    g_q, g_k, g_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    g_b = inv_b.new_zeros(inv_b.numel())
    g_kv = torch.zeros_like(kv)
    for s, t in _blocks(N, block):
        phi_q, xn, norm = _block_features(q[:, :, s:t], omega_t, inv_b, True, offsets, normalize)
        g_out = _output_grad(gy[:, :, s:t], y[:, :, s:t], den[:, :, s:t])  # (B, H, T, d+1)
        g_kv += phi_q.transpose(-1, -2) @ g_out
        g_e = (g_out @ kv.transpose(-1, -2)).mul_(phi_q)  # d exp(e) = exp(e) de
        g_q[:, :, s:t], gb = _features_backward(g_e, xn, norm, inv_b, omega)
        g_b += gb
    g_s, g_z = g_kv[..., :d], g_kv[..., d]
    for s, t in _blocks(N, block):
        phi_k, xn, norm = _block_features(k[:, :, s:t], omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
        g_v[:, :, s:t] = phi_k @ g_s
        g_e = (v[:, :, s:t] @ g_s.transpose(-1, -2)).add_(g_z.unsqueeze(-2)).mul_(phi_k)
        g_k[:, :, s:t], gb = _features_backward(g_e, xn, norm, inv_b, omega)
        g_b += gb
    return g_q, g_k, g_v, g_b


# ------------------------------------------------------------------------ causal
def _causal_chunks(phi_q, phi_k, v, state, c):
    """The chunk-state form of one block, batched over its chunks (what forward and backward share).

    Returns ``qc, kc, vc`` (chunked, zero-padded to a multiple of ``c``), the masked
    intra-chunk scores ``(B, H, C, c, c)``, the state entering each chunk
    ``before (B, H, C, m, d+1)``, the state leaving the block, the mask and the padding.
    """
    B, H, T, m = phi_q.shape
    vv = _ones_column(v)
    e = vv.shape[-1]
    pad = (-T) % c
    if pad:  # features of padded tokens are zero: they add nothing
        phi_q, phi_k, vv = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, vv))
    C = (T + pad) // c
    qc, kc, vc = phi_q.view(B, H, C, c, m), phi_k.view(B, H, C, c, m), vv.view(B, H, C, c, e)
    tril = torch.ones(c, c, dtype=torch.bool, device=phi_q.device).tril().to(phi_q.dtype)
    scores = (qc @ kc.transpose(-1, -2)).mul_(tril)  # (B, H, C, c, c)
    chunk_kv = kc.transpose(-1, -2) @ vc  # (B, H, C, m, e)
    # Exclusive prefix over chunks, one add per chunk into a preallocated tensor (not
    # "cumsum - self": no cancellation). torch.cumsum along this axis, plus the concatenation
    # with the entering state, ran about 10x slower than these adds of (m, e) slices.
    before = torch.empty_like(chunk_kv)
    before[:, :, 0] = state
    for j in range(1, C):
        torch.add(before[:, :, j - 1], chunk_kv[:, :, j - 1], out=before[:, :, j])
    new_state = before[:, :, -1] + chunk_kv[:, :, -1]
    return qc, kc, vc, scores, before, new_state, tril, pad


def _causal_block(phi_q, phi_k, v, state, c):
    """Chunked causal linear attention of one block: ``out (B, H, T, d+1)`` and the state after it.

    Per chunk, the intra-chunk part is a masked ``c x c`` GEMM and the inter-chunk part one
    ``(c, m) @ (m, d+1)`` GEMM with the state entering the chunk.
    """
    T = phi_q.shape[2]
    qc, _, vc, scores, before, new_state, _, _ = _causal_chunks(phi_q, phi_k, v, state, c)
    out = scores @ vc
    out += qc @ before
    B, H, C = out.shape[:3]
    return out.view(B, H, C * c, -1)[:, :, :T], new_state


def _causal_forward(q, k, v, omega_t, inv_b, key_mask, eps, block, c, offsets, state=None, normalize=True):
    B, H, N, d = v.shape
    m = omega_t.shape[-1]
    if state is None:
        state = v.new_zeros(B, H, m, d + 1)
    states = []
    y = v.new_empty(B, H, N, d)
    den = v.new_empty(B, H, N, 1)
    for s, t in _blocks(N, block):
        states.append(state)
        phi_q, _, _ = _block_features(q[:, :, s:t], omega_t, inv_b, True, offsets, normalize)
        phi_k, _, _ = _block_features(k[:, :, s:t], omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
        out, state = _causal_block(phi_q, phi_k, v[:, :, s:t], state, c)
        den[:, :, s:t] = out[..., d:] + eps
        torch.div(out[..., :d], den[:, :, s:t], out=y[:, :, s:t])
    return y, den, torch.stack(states), state


def _causal_backward(gy, q, k, v, omega, omega_t, inv_b, key_mask, y, den, states, block, c, offsets,
                     normalize=True):
    B, H, N, d = v.shape
    g_q, g_k, g_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    g_b = inv_b.new_zeros(inv_b.numel())
    g_state = None  # gradient of the state leaving the current block (none leaves the last)
    blocks = _blocks(N, block)
    for i in range(len(blocks) - 1, -1, -1):
        s, t = blocks[i]
        T = t - s
        phi_q, xq, nq = _block_features(q[:, :, s:t], omega_t, inv_b, True, offsets, normalize)
        phi_k, xk, nk = _block_features(k[:, :, s:t], omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
        # The backward needs the chunk states and scores, not the block's output: no recomputed output.
        qc, kc, vc, scores, before, _, tril, pad = _causal_chunks(phi_q, phi_k, v[:, :, s:t], states[i], c)
        C = qc.shape[2]
        g_out = _output_grad(gy[:, :, s:t], y[:, :, s:t], den[:, :, s:t])
        if pad:
            g_out = F.pad(g_out, (0, 0, 0, pad))
        g_out = g_out.view(B, H, C, c, d + 1)
        # out = scores @ vc + qc @ before
        g_scores = (g_out @ vc.transpose(-1, -2)).mul_(tril)
        g_qc = g_scores @ kc
        g_qc += g_out @ before.transpose(-1, -2)
        g_kc = g_scores.transpose(-1, -2) @ qc
        g_vc = scores.transpose(-1, -2) @ g_out
        # before_j = state + sum_{i<j} kv_i, state_out = state + sum_i kv_i
        g_before = qc.transpose(-1, -2) @ g_out  # (B, H, C, m, e)
        # g_kv_i = g_state + sum_{j > i} g_before_j: an exclusive suffix sum, one add per chunk,
        # without "total - cumsum" cancellation (a query row with no real key divides by eps,
        # so one chunk's g_before may exceed the others by 1/eps).
        g_kv = torch.empty_like(g_before)
        if g_state is None:
            g_kv[:, :, -1] = 0
        else:
            g_kv[:, :, -1] = g_state
        for j in range(C - 2, -1, -1):
            torch.add(g_kv[:, :, j + 1], g_before[:, :, j + 1], out=g_kv[:, :, j])
        g_state = g_kv[:, :, 0] + g_before[:, :, 0]
        # chunk_kv = kc^T @ vc
        g_kc += vc @ g_kv.transpose(-1, -2)
        g_vc += kc @ g_kv
        g_phi_q = g_qc.view(B, H, C * c, -1)[:, :, :T]
        g_phi_k = g_kc.view(B, H, C * c, -1)[:, :, :T]
        g_v[:, :, s:t] = g_vc.view(B, H, C * c, d + 1)[:, :, :T, :d]
        g_q[:, :, s:t], gb = _features_backward(g_phi_q * phi_q, xq, nq, inv_b, omega)
        g_b += gb
        g_k[:, :, s:t], gb = _features_backward(g_phi_k * phi_k, xk, nk, inv_b, omega)  # phi_k is masked
        g_b += gb
    return g_q, g_k, g_v, g_b


class _FavorAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, omega, bandwidth, key_mask, eps, causal, chunk_size, block_size, key_shift,
                normalize):
        omega_t = omega.transpose(-1, -2).unsqueeze(0)  # (1, H, d, m)
        inv_b = (1.0 / bandwidth).view(1, -1, 1, 1)
        key_max = isinstance(key_shift, str)
        offsets = _offsets(omega, None if key_max else key_shift)
        if causal:
            y, den, extra, _ = _causal_forward(q, k, v, omega_t, inv_b, key_mask, eps, block_size,
                                               chunk_size, offsets, normalize=normalize)
        else:
            # With the running key max, the offsets come back holding the final max (the backward's shift).
            y, den, extra, offsets = _bidir_forward(q, k, v, omega_t, inv_b, key_mask, eps, block_size, offsets,
                                                    normalize, key_max)
        ctx.save_for_backward(q, k, v, omega, bandwidth, y, den, extra)
        ctx.key_mask = key_mask
        ctx.opts = (causal, chunk_size, block_size, offsets, normalize)
        return y

    @staticmethod
    def backward(ctx, gy):
        q, k, v, omega, bandwidth, y, den, extra = ctx.saved_tensors
        causal, chunk_size, block_size, offsets, normalize = ctx.opts
        omega_t = omega.transpose(-1, -2).unsqueeze(0)
        omega4 = omega.unsqueeze(0)
        inv_b = (1.0 / bandwidth).view(1, -1, 1, 1)
        if causal:
            g_q, g_k, g_v, g_b = _causal_backward(gy, q, k, v, omega4, omega_t, inv_b, ctx.key_mask, y, den,
                                                  extra, block_size, chunk_size, offsets, normalize)
        else:
            g_q, g_k, g_v, g_b = _bidir_backward(gy, q, k, v, omega4, omega_t, inv_b, ctx.key_mask, y, den,
                                                 extra, block_size, offsets, normalize)
        # g_b is dL/db already (_features_backward differentiates x^ = u / b with respect to b).
        return g_q, g_k, g_v, None, g_b.to(bandwidth.dtype), None, None, None, None, None, None, None


def favor_attention(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *, causal: bool,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, block_size: int = 2048,
    key_shift: Tensor | str | None = None, normalize: bool = True,
) -> Tensor:
    """Fused FAVOR+ attention of l2-normalised (or not), bandwidth-scaled queries and keys.

    Args:
        q, k: ``(B, H, N, d)`` queries and keys (before normalisation).
        v: ``(B, H, N, d)`` values.
        omega: ``(H, m, d)`` projections (a constant: receives no gradient).
        bandwidth: ``(H,)`` positive bandwidths ``b`` (differentiable).
        causal: prefix sums (chunked) instead of full sums.
        key_mask: ``(B, N)`` bool, ``True`` for real keys.
        eps: denominator guard.
        chunk_size: tokens per chunk of the causal form.
        block_size: tokens per block (features of one block are materialised at a
            time; rounded up to a multiple of ``chunk_size`` when causal).
        key_shift: ``(H,)`` constant subtracted from the key exponents (detached), or
            ``"max"``: each (batch row, head)'s max key exponent over its real keys
            (bidirectional only: a causal query may not see every key).
        normalize: l2-normalise ``q`` and ``k`` before dividing by ``b`` (WERSA); ``False``
            only divides (Performer, with ``b = 1`` and inputs already scaled).
    Returns:
        ``(B, H, N, d)`` in the dtype of ``q`` (callers pass fp32 or fp64).
    """
    if chunk_size <= 0 or block_size <= 0:
        raise ValueError(f"chunk_size and block_size must be positive, got {chunk_size}, {block_size}")
    if isinstance(key_shift, str) and (key_shift != "max" or causal):
        raise ValueError(f"key_shift={key_shift!r}: only 'max', and only bidirectional (causal=False); "
                         f"a causal query may not see the key that sets the max")
    if q.shape[-2] == 0:
        return v.new_zeros(v.shape)
    if causal:
        block_size = -(-block_size // chunk_size) * chunk_size
    dtype = q.dtype
    # No .contiguous(): blocks are sliced from strided views (e.g. heads of a fused
    # qkv projection) without copying the whole sequence.
    k, v = k.to(dtype), v.to(dtype)
    omega = omega.detach().to(dtype).contiguous()
    return _FavorAttention.apply(q, k, v, omega, bandwidth.to(dtype), key_mask, eps, causal, chunk_size, block_size,
                                 key_shift, bool(normalize))


@torch.no_grad()
def favor_attention_with_state(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, block_size: int = 2048,
    key_shift: Tensor | None = None,
) -> tuple[Tensor, LinearAttentionState]:
    """Causal forward only (no autograd), also returning the running sums after the last token (prefill)."""
    block_size = -(-block_size // chunk_size) * chunk_size
    dtype = q.dtype
    omega = omega.to(dtype)
    y, _, _, state = _causal_forward(q, k.to(dtype), v.to(dtype),
                                     omega.transpose(-1, -2).unsqueeze(0), (1.0 / bandwidth.to(dtype)).view(1, -1, 1, 1),
                                     key_mask, eps, block_size, chunk_size, _offsets(omega, key_shift))
    d = v.shape[-1]
    return y, LinearAttentionState(state[..., :d].contiguous(), state[..., d].contiguous())


def favor_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *, causal: bool,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, key_shift: Tensor | str | None = None,
    normalize: bool = True,
) -> Tensor:
    """The unfused composition :func:`favor_attention` must equal (values and gradients)."""
    b = bandwidth.view(1, -1, 1, 1)
    qn, kn = (F.normalize(x, dim=-1, eps=_NORM_EPS) if normalize else x for x in (q, k))
    phi_q = softmax_kernel_features(qn / b, omega, stabilize=True)
    if isinstance(key_shift, str):  # "max": over each (row, head)'s real keys, detached
        exponent = (kn / b) @ omega.transpose(-1, -2) - 0.5 * ((kn / b) ** 2).sum(-1, keepdim=True)
        if key_mask is not None:
            exponent = exponent.masked_fill(~key_mask[:, None, :, None], float("-inf"))
        top = exponent.detach().amax(dim=(-1, -2), keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        phi_k = torch.exp(exponent - top) / math.sqrt(omega.shape[-2])
    else:
        phi_k = softmax_kernel_features(kn / b, omega, stabilize=False, shift=key_shift)
    if causal:
        return causal_linear_attention(phi_q, phi_k, v, key_mask=key_mask, eps=eps, chunk_size=chunk_size)
    return linear_attention(phi_q, phi_k, v, key_mask=key_mask, eps=eps)
