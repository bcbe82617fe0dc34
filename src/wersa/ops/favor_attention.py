"""Fused, memory-lean FAVOR+ attention: features and linear attention in one autograd node.

Computes, per head ``h`` with bandwidth ``b_h`` and projection ``Omega_h`` (``m x d``)::

    q^ = normalize(q) / b_h,  k^ = normalize(k) / b_h
    phi(x^) = exp(Omega_h x^ - |x^|^2 / 2) / sqrt(m)        (queries also shifted by their row max)
    y_i = phi(q^_i)^T S / (phi(q^_i)^T z + eps)              (S, z summed over all real keys,
                                                              or over keys j <= i when causal)

With ``normalize=False`` the inputs are only scaled (``x^ = x / b_h``: Performer's FAVOR+,
whose ``q`` and ``k`` arrive already scaled by ``d^{-1/4}``, passes ``b = 1``), and with
``key_shift="max"`` the key exponents are shifted as Performer's plain path does:
bidirectionally by their max over the real keys of each (batch row, head), kept as a
running max while the key blocks go by (the sums so far are rescaled when it grows);
causally by each query's running max over the keys it sees
(:mod:`~wersa.ops.running_max_attention`): keys are stored relative to their own running
max, weighed by ``exp(M_j - M_i) <= 1`` inside a chunk, and the state is rescaled when
the max grows. The maxes are detached constants.

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
  :func:`~wersa.ops.linear_attention.causal_linear_attention`, one chunk at a
  time: a masked ``chunk x chunk`` product for the chunk's own keys plus one GEMM
  against the running ``(m, d + 1)`` state, then the state absorbs the chunk.
  Only chunk-sized temporaries exist (no per-chunk state stack), which keeps the
  working set in cache. Across blocks, the running state is carried forward and
  its gradient carried backward (blocks in reverse, the state entering each block
  saved in the forward pass; the backward pass rebuilds the states inside a block
  in one forward sweep, then runs the reverse sweep with a running state gradient).
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

from .causal_pyramid import window_taps_rows, window_taps_rows_backward
from .feature_maps import softmax_kernel_features
from .haar import band_sizes, haar_filter_rows, haar_filter_rows_backward
from .heads import empty_like_qkv
from .linear_attention import LinearAttentionState, causal_linear_attention, linear_attention
from .running_max_attention import RunningMaxState, running_max_attention_reference

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


def _add_matmul_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``acc += a @ b`` as one GEMM accumulating into ``acc`` (contiguous): no ``a @ b`` temporary."""
    acc.view(-1, *acc.shape[-2:]).baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return acc


def _token_major(v: Tensor, B: int, H: int, N: int, d: int) -> Tensor:
    """An empty ``(B, H, N, d)`` output stored token-major (``(B, N, H, d)`` in memory), the
    layout the heads' merge reads: merging it into ``(B, N, H*d)`` is a view, not a copy."""
    return v.new_empty(B, N, H, d).transpose(1, 2)


def _rows(mask: Tensor | None, s: int, t: int) -> Tensor | None:
    """Tokens ``s:t`` of a ``(B, N)`` mask (``None`` stays ``None``)."""
    return None if mask is None else mask[:, s:t]


def _blocks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _finite(x: Tensor) -> Tensor:
    """``x`` with ``-inf`` (no real key yet) replaced by 0, so ``exp(a - x)`` with ``a <= x`` is never NaN."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _taps(x: Tensor, w: Tensor | None, s: int, t: int) -> Tensor:
    """Tokens ``s:t`` of ``x`` ``(B, H, N, d)``, through the causal window taps ``w (B, N, J)`` when given."""
    return x[:, :, s:t] if w is None else window_taps_rows(x, w, s, t)


def _haar_rows(x: Tensor, haar, s: int, t: int) -> Tensor:
    """Tokens ``s:t`` of ``x``, through the Haar filter when ``haar`` = ``(levels, band gains)`` is given."""
    return x[:, :, s:t] if haar is None else haar_filter_rows(x, haar[1], haar[0], s, t)


def _haar_spec(gains: Tensor | None, levels: int, n: int):
    """``(levels, [g_A, g_D_L, ..., g_D_1])`` from the bands concatenated ``(B, sum of band sizes)``,
    or ``None`` without a filter."""
    return None if gains is None else (levels, list(gains.split(band_sizes(n, levels), dim=1)))


def _check_key_shift(key_shift) -> bool:
    """Validate ``key_shift``; ``True`` for the running max (``"max"``)."""
    if isinstance(key_shift, str) and key_shift != "max":
        raise ValueError(f"key_shift={key_shift!r}: a per-head tensor, None or 'max'")
    return isinstance(key_shift, str)


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
        safe = _finite(new)
        # exp(-inf - x) = 0: padded keys and rows without real keys so far add nothing.
        kv.mul_(torch.exp(run - safe))
        kv += e.sub_(safe + log_scale).exp_().transpose(-1, -2) @ _ones_column(v[:, :, s:t])
        run = new
    return kv, _finite(run)[:, :, 0, 0]


def _bidir_forward(q, k, v, omega_t, inv_b, key_mask, eps, block, offsets, normalize=True, key_max=False,
                   haar=None):
    B, H, N, d = v.shape
    if key_max:
        kv, shift = _running_max_key_sums(k, v, omega_t, inv_b, key_mask, block, offsets[0], normalize)
        offsets = (offsets[0], shift[:, :, None, None] + offsets[0])
    else:
        shift = None
        kv = v.new_zeros(B, H, omega_t.shape[-1], d + 1)  # [S | z]
        for s, t in _blocks(N, block):
            phi_k, _, _ = _block_features(_haar_rows(k, haar, s, t), omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
            kv += phi_k.transpose(-1, -2) @ _ones_column(v[:, :, s:t])
    y = _token_major(v, B, H, N, d)
    den = v.new_empty(B, H, N, 1)
    for s, t in _blocks(N, block):
        phi_q, _, _ = _block_features(_haar_rows(q, haar, s, t), omega_t, inv_b, True, offsets, normalize)
        out = phi_q @ kv
        den[:, :, s:t] = out[..., d:] + eps
        torch.div(out[..., :d], den[:, :, s:t], out=y[:, :, s:t])
    return y, den, kv, offsets


def _bidir_backward(gy, q, k, v, omega, omega_t, inv_b, key_mask, y, den, kv, block, offsets, normalize=True,
                    haar=None):
    """Gradients of :func:`_bidir_forward`: ``g_q``, ``g_k``, ``g_v``, ``g_b`` and, with ``haar``,
    the band gains' gradients (the filtered blocks are recomputed; their gradients go back
    through the filter, which is self-adjoint)."""
    N, d = v.shape[-2], v.shape[-1]
    g_q, g_k, g_v = empty_like_qkv(q, k, v)  # one buffer when q, k, v are heads of one projection
    g_bands = None if haar is None else [torch.zeros_like(g) for g in haar[1]]

    def put(g_x, x, g_block, s, t):
        g_x[:, :, s:t] = g_block if haar is None else haar_filter_rows_backward(g_block, x, haar[1], haar[0], s, t,
                                                                                  g_bands)

    g_b = inv_b.new_zeros(inv_b.numel())
    g_kv = torch.zeros_like(kv)
    for s, t in _blocks(N, block):
        phi_q, xn, norm = _block_features(_haar_rows(q, haar, s, t), omega_t, inv_b, True, offsets, normalize)
        g_out = _output_grad(gy[:, :, s:t], y[:, :, s:t], den[:, :, s:t])  # (B, H, T, d+1)
        g_kv += phi_q.transpose(-1, -2) @ g_out
        g_e = (g_out @ kv.transpose(-1, -2)).mul_(phi_q)  # d exp(e) = exp(e) de
        g_block, gb = _features_backward(g_e, xn, norm, inv_b, omega)
        put(g_q, q, g_block, s, t)
        g_b += gb
    g_s, g_z = g_kv[..., :d], g_kv[..., d]
    for s, t in _blocks(N, block):
        phi_k, xn, norm = _block_features(_haar_rows(k, haar, s, t), omega_t, inv_b, False, offsets, normalize,
                                           _rows(key_mask, s, t))
        g_v[:, :, s:t] = phi_k @ g_s
        g_e = (v[:, :, s:t] @ g_s.transpose(-1, -2)).add_(g_z.unsqueeze(-2)).mul_(phi_k)
        g_block, gb = _features_backward(g_e, xn, norm, inv_b, omega)
        put(g_k, k, g_block, s, t)
        g_b += gb
    return g_q, g_k, g_v, g_b, g_bands


# ------------------------------------------------------------------------ causal
def _chunk_views(phi_q: Tensor, phi_k: Tensor, v: Tensor):
    """``(B*H, T, .)`` views of one block's features and ``[v | 1]``, and the causal mask of a chunk."""
    B, H, T, m = phi_q.shape
    vv = _ones_column(v)
    return (phi_q.reshape(B * H, T, m), phi_k.reshape(B * H, T, m), vv.view(B * H, T, vv.shape[-1]),
            lambda c: torch.ones(c, c, dtype=phi_q.dtype, device=phi_q.device).tril_())


def _causal_block(phi_q, phi_k, v, state, c):
    """Chunked causal linear attention of one block: ``out (B, H, T, d+1)`` and the state after it.

    The chunks go by in order carrying one ``(m, d+1)`` state per (batch row, head): per
    chunk, a masked ``c x c`` GEMM for the keys inside it and one GEMM with the state
    entering it. Every temporary is chunk-sized, so none is a fresh ``(T, m)``-sized
    allocation (on CPU, first-touch page faults on fresh memory cost as much as the
    adds of a materialised ``(T / c, m, d+1)`` chunk-state tensor).
    """
    B, H, T, m = phi_q.shape
    q3, k3, v3, tril = _chunk_views(phi_q, phi_k, v)
    out = v3.new_empty(v3.shape)
    run = state.reshape(B * H, m, -1).clone()
    mask = tril(c)
    for s, t in _blocks(T, c):
        qj, kj, vj = q3[:, s:t], k3[:, s:t], v3[:, s:t]
        scores = torch.bmm(qj, kj.transpose(1, 2)).mul_(mask[:t - s, :t - s])
        oj = out[:, s:t].baddbmm_(scores, vj, beta=0)
        oj.baddbmm_(qj, run)
        run.baddbmm_(kj.transpose(1, 2), vj)
    return out.view(B, H, T, -1), run.view(B, H, m, -1)


def _causal_block_backward(phi_q, phi_k, v, state, g_out, g_state, c):
    """Gradients of :func:`_causal_block` with respect to its features, ``[v | 1]`` and entering state.

    ``out_j = tril(q_j k_j^T) vv_j + q_j S_j`` with ``S_j`` the state entering chunk ``j``.
    In chunk order the states are rebuilt and everything that needs ``S_j`` is done; in
    reverse order the gradient of the state, ``G_j = g_state + sum_{i > j} q_i^T g_out_i``
    (a sequential suffix sum, no "total - prefix" cancellation), feeds the keys and values.
    Returns ``g_phi_q``, ``g_phi_k`` ``(B, H, T, m)``, ``g_vv`` ``(B, H, T, d+1)`` and the
    gradient of the state entering the block ``(B, H, m, d+1)``.
    """
    B, H, T, m = phi_q.shape
    q3, k3, v3, tril = _chunk_views(phi_q, phi_k, v)
    go3 = g_out.reshape(B * H, T, -1)
    g_q3, g_k3, g_v3 = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    run = state.reshape(B * H, m, -1).clone()
    mask = tril(c)
    for s, t in _blocks(T, c):
        qj, kj, vj, gj = q3[:, s:t], k3[:, s:t], v3[:, s:t], go3[:, s:t]
        tri = mask[:t - s, :t - s]
        scores = torch.bmm(qj, kj.transpose(1, 2)).mul_(tri)
        g_scores = torch.bmm(gj, vj.transpose(1, 2)).mul_(tri)
        g_q3[:, s:t].baddbmm_(g_scores, kj, beta=0).baddbmm_(gj, run.transpose(1, 2))
        g_k3[:, s:t].baddbmm_(g_scores.transpose(1, 2), qj, beta=0)
        g_v3[:, s:t].baddbmm_(scores.transpose(1, 2), gj, beta=0)
        run.baddbmm_(kj.transpose(1, 2), vj)
    g_run = run.zero_() if g_state is None else g_state.reshape(B * H, m, -1).clone()
    for s, t in reversed(_blocks(T, c)):
        qj, kj, vj, gj = q3[:, s:t], k3[:, s:t], v3[:, s:t], go3[:, s:t]
        g_k3[:, s:t].baddbmm_(vj, g_run.transpose(1, 2))
        g_v3[:, s:t].baddbmm_(kj, g_run)
        g_run.baddbmm_(qj.transpose(1, 2), gj)
    return (g_q3.view(B, H, T, m), g_k3.view(B, H, T, m), g_v3.view(B, H, T, -1), g_run.view(B, H, m, -1))


def _running_max_key_features(k, omega_t, inv_b, offsets, normalize, key_mask, run_max):
    """One block's key features shifted by each token's running max (causal ``key_shift="max"``).

    ``M_j = max(run_max, max_{j' <= j} max_f e_{j'}[f])`` over the block's real keys, with
    ``e = Omega x^ - |x^|^2 / 2`` unshifted, ``-inf`` until the first real key. Returns
    ``phi_k = exp(e_j - M_j - offset)`` (the offset is ``log sqrt(m)``; 0 at padded keys),
    ``x^``, the clamped norm and ``M`` ``(B, H, T)``.
    """
    e, xn, norm = _block_exponents(k, omega_t, inv_b, False, (offsets[0], 0.0), normalize, key_mask)
    M = torch.maximum(torch.cummax(e.amax(-1), dim=-1).values, run_max.unsqueeze(-1))
    return e.sub_(_finite(M).unsqueeze(-1) + offsets[1]).exp_(), xn, norm, M


def _strict_upper(c: int, device) -> Tensor:
    """The ``c x c`` strictly upper triangle (keys after the query) as a bool mask."""
    return torch.ones(c, c, dtype=torch.bool, device=device).triu_(1)


def _running_max_scales(Mc: Tensor, R: Tensor, upper: Tensor):
    """The rescalings of one chunk, all ``<= 1`` (``Mc (BH, c)``: the chunk's running maxes,
    ``R (BH,)``: the max the entering state is relative to, ``upper``: the ``c x c`` strictly upper
    triangle). Returns ``w[i, j] = exp(M_j - M_i)`` for ``j <= i`` (else 0), ``carry_i = exp(R - M_i)``,
    ``to_end_j = exp(M_j - M_end)`` and ``decay = exp(R - M_end)``."""
    Ms = _finite(Mc)
    w = (Mc.unsqueeze(-2) - Ms.unsqueeze(-1)).masked_fill_(upper, float("-inf")).exp_()
    end = Ms[:, -1:]
    return w, (R.unsqueeze(-1) - Ms).exp_(), (Mc - end).exp_(), (R.unsqueeze(-1) - end).exp_()


def _causal_block_running_max(phi_q, phi_k, v, state, run_max, M, c):
    """:func:`_causal_block` with keys relative to each query's running max.

    ``phi_k_j = exp(e_j - M_j)``; query ``i`` weighs key ``j <= i`` of its chunk by
    ``exp(M_j - M_i)`` and the entering state (relative to ``run_max``) by ``exp(R - M_i)``;
    the state leaving a chunk is kept relative to the chunk's last running max. Every factor
    is ``<= 1``: nothing overflows whatever the key exponents. ``state (B, H, m, d+1)``,
    ``run_max (B, H)``, ``M (B, H, T)``; returns ``out (B, H, T, d+1)``, the state after the block
    and the max it is relative to.
    """
    B, H, T, m = phi_q.shape
    q3, k3, v3, _ = _chunk_views(phi_q, phi_k, v)
    M3, R = M.reshape(B * H, T), run_max.reshape(B * H)
    out = v3.new_empty(v3.shape)
    run = state.reshape(B * H, m, -1).clone()
    upper = _strict_upper(c, phi_q.device)
    for s, t in _blocks(T, c):
        qj, kj, vj, Mc = q3[:, s:t], k3[:, s:t], v3[:, s:t], M3[:, s:t]
        w, carry, to_end, decay = _running_max_scales(Mc, R, upper[:t - s, :t - s])
        scores = torch.bmm(qj, kj.transpose(1, 2)).mul_(w)
        oj = out[:, s:t].baddbmm_(qj, run, beta=0).mul_(carry.unsqueeze(-1))
        oj.baddbmm_(scores, vj)
        run.mul_(decay.unsqueeze(-1)).baddbmm_((kj * to_end.unsqueeze(-1)).transpose(1, 2), vj)
        R = Mc[:, -1]
    return out.view(B, H, T, -1), run.view(B, H, m, -1), R.view(B, H)


def _causal_block_running_max_backward(phi_q, phi_k, v, state, run_max, M, g_out, g_state, c):
    """Gradients of :func:`_causal_block_running_max` (the maxes are constants).

    ``out_i = sum_{j <= i} w_ij (q_i . k_j) vv_j + carry_i q_i S_in`` and
    ``S_out = decay S_in + (to_end * k)^T vv`` per chunk: the forward sweep rebuilds ``S_in``
    for the terms that need it, the reverse sweep carries ``G = dL/dS`` back
    (``G_in = decay G_out + (carry * q)^T g``). Returns as :func:`_causal_block_backward`.
    """
    B, H, T, m = phi_q.shape
    q3, k3, v3, _ = _chunk_views(phi_q, phi_k, v)
    M3, R = M.reshape(B * H, T), run_max.reshape(B * H)
    go3 = g_out.reshape(B * H, T, -1)
    g_q3, g_k3, g_v3 = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    run = state.reshape(B * H, m, -1).clone()
    upper = _strict_upper(c, phi_q.device)
    scales = []
    for s, t in _blocks(T, c):
        qj, kj, vj, gj, Mc = q3[:, s:t], k3[:, s:t], v3[:, s:t], go3[:, s:t], M3[:, s:t]
        w, carry, to_end, decay = _running_max_scales(Mc, R, upper[:t - s, :t - s])
        scales.append((carry, to_end, decay))
        scores = torch.bmm(qj, kj.transpose(1, 2)).mul_(w)
        g_scores = torch.bmm(gj, vj.transpose(1, 2)).mul_(w)
        g_q3[:, s:t].baddbmm_(gj, run.transpose(1, 2), beta=0).mul_(carry.unsqueeze(-1)).baddbmm_(g_scores, kj)
        g_k3[:, s:t].baddbmm_(g_scores.transpose(1, 2), qj, beta=0)
        g_v3[:, s:t].baddbmm_(scores.transpose(1, 2), gj, beta=0)
        run.mul_(decay.unsqueeze(-1)).baddbmm_((kj * to_end.unsqueeze(-1)).transpose(1, 2), vj)
        R = Mc[:, -1]
    g_run = run.zero_() if g_state is None else g_state.reshape(B * H, m, -1).clone()
    for (s, t), (carry, to_end, decay) in zip(reversed(_blocks(T, c)), reversed(scales)):
        qj, kj, vj, gj = q3[:, s:t], k3[:, s:t], v3[:, s:t], go3[:, s:t]
        g_k3[:, s:t].addcmul_(vj @ g_run.transpose(1, 2), to_end.unsqueeze(-1))
        g_v3[:, s:t].baddbmm_(kj * to_end.unsqueeze(-1), g_run)
        g_run.mul_(decay.unsqueeze(-1)).baddbmm_((qj * carry.unsqueeze(-1)).transpose(1, 2), gj)
    return (g_q3.view(B, H, T, m), g_k3.view(B, H, T, m), g_v3.view(B, H, T, -1), g_run.view(B, H, m, -1))


def _causal_forward(q, k, v, omega_t, inv_b, key_mask, eps, block, c, offsets, state=None, normalize=True,
                    key_max=False, taps=None):
    """Blocks in order, carrying the running state (and, with ``key_max``, the running key max).

    Returns ``y``, ``den``, the states entering the blocks ``(blocks, B, H, m, d+1)``, the maxes
    they are relative to ``(blocks, B, H)`` (``-inf`` before the first real key; empty without
    ``key_max``), the final state and the final max.
    """
    B, H, N, d = v.shape
    m = omega_t.shape[-1]
    if state is None:
        state = v.new_zeros(B, H, m, d + 1)
    run_max = v.new_full((B, H), float("-inf")) if key_max else None
    states, maxes = [], []
    y = _token_major(v, B, H, N, d)
    den = v.new_empty(B, H, N, 1)
    for s, t in _blocks(N, block):
        states.append(state)
        phi_q, _, _ = _block_features(_taps(q, taps, s, t), omega_t, inv_b, True, offsets, normalize)
        if key_max:
            maxes.append(run_max)
            phi_k, _, _, M = _running_max_key_features(k[:, :, s:t], omega_t, inv_b, offsets, normalize,
                                                       _rows(key_mask, s, t), run_max)
            out, state, run_max = _causal_block_running_max(phi_q, phi_k, v[:, :, s:t], state, run_max, M, c)
        else:
            phi_k, _, _ = _block_features(_taps(k, taps, s, t), omega_t, inv_b, False, offsets, normalize,
                                          _rows(key_mask, s, t))
            out, state = _causal_block(phi_q, phi_k, v[:, :, s:t], state, c)
        den[:, :, s:t] = out[..., d:] + eps
        torch.div(out[..., :d], den[:, :, s:t], out=y[:, :, s:t])
    maxes = torch.stack(maxes) if key_max else v.new_empty(0)
    return y, den, torch.stack(states), maxes, state, run_max


def _causal_backward(gy, q, k, v, omega, omega_t, inv_b, key_mask, y, den, states, maxes, block, c, offsets,
                     normalize=True, taps=None):
    """Gradients of :func:`_causal_forward`: ``g_q``, ``g_k``, ``g_v``, ``g_b`` and, with ``taps``,
    ``g_taps`` (the filtered blocks are recomputed; their gradients go back through the taps)."""
    B, H, N, d = v.shape
    # One buffer when q, k, v are heads of one projection; with taps, blocks' taps reach into
    # the previous block, so the gradients accumulate from zero.
    g_q, g_k, g_v = empty_like_qkv(q, k, v, zero=taps is not None)
    g_taps = None if taps is None else torch.zeros_like(taps)
    g_b = inv_b.new_zeros(inv_b.numel())
    g_state = None  # gradient of the state leaving the current block (none leaves the last)
    blocks = _blocks(N, block)
    key_max = maxes.numel() > 0
    for i in range(len(blocks) - 1, -1, -1):
        s, t = blocks[i]
        phi_q, xq, nq = _block_features(_taps(q, taps, s, t), omega_t, inv_b, True, offsets, normalize)
        g_out = _output_grad(gy[:, :, s:t], y[:, :, s:t], den[:, :, s:t])
        if key_max:
            phi_k, xk, nk, M = _running_max_key_features(k[:, :, s:t], omega_t, inv_b, offsets, normalize,
                                                         _rows(key_mask, s, t), maxes[i])
            g_phi_q, g_phi_k, g_vv, g_state = _causal_block_running_max_backward(
                phi_q, phi_k, v[:, :, s:t], states[i], maxes[i], M, g_out, g_state, c)
        else:
            phi_k, xk, nk = _block_features(_taps(k, taps, s, t), omega_t, inv_b, False, offsets, normalize,
                                            _rows(key_mask, s, t))
            g_phi_q, g_phi_k, g_vv, g_state = _causal_block_backward(phi_q, phi_k, v[:, :, s:t], states[i], g_out,
                                                                     g_state, c)
        g_v[:, :, s:t] = g_vv[..., :d]
        g_qb, gb = _features_backward(g_phi_q.mul_(phi_q), xq, nq, inv_b, omega)
        g_b += gb
        g_kb, gb = _features_backward(g_phi_k.mul_(phi_k), xk, nk, inv_b, omega)  # phi_k is masked
        g_b += gb
        if taps is None:
            g_q[:, :, s:t], g_k[:, :, s:t] = g_qb, g_kb
        else:
            window_taps_rows_backward(g_qb, q, taps, s, t, g_q, g_taps)
            window_taps_rows_backward(g_kb, k, taps, s, t, g_k, g_taps)
    return g_q, g_k, g_v, g_b, g_taps


class _FavorAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, omega, bandwidth, key_mask, eps, causal, chunk_size, block_size, key_shift,
                normalize, taps, haar_levels, haar_gains):
        omega_t = omega.transpose(-1, -2).unsqueeze(0)  # (1, H, d, m)
        inv_b = (1.0 / bandwidth).view(1, -1, 1, 1)
        key_max = isinstance(key_shift, str)
        offsets = _offsets(omega, None if key_max else key_shift)
        haar = _haar_spec(haar_gains, haar_levels, q.shape[-2])
        if causal:
            y, den, extra, maxes, _, _ = _causal_forward(q, k, v, omega_t, inv_b, key_mask, eps, block_size,
                                                         chunk_size, offsets, normalize=normalize, key_max=key_max,
                                                         taps=taps)
        else:
            # With the running key max, the offsets come back holding the final max (the backward's shift).
            y, den, extra, offsets = _bidir_forward(q, k, v, omega_t, inv_b, key_mask, eps, block_size, offsets,
                                                    normalize, key_max, haar)
            maxes = None
        ctx.save_for_backward(q, k, v, omega, bandwidth, y, den, extra, maxes, taps, haar_gains)
        ctx.key_mask = key_mask
        ctx.opts = (causal, chunk_size, block_size, offsets, normalize, haar_levels)
        return y

    @staticmethod
    def backward(ctx, gy):
        q, k, v, omega, bandwidth, y, den, extra, maxes, taps, haar_gains = ctx.saved_tensors
        causal, chunk_size, block_size, offsets, normalize, haar_levels = ctx.opts
        omega_t = omega.transpose(-1, -2).unsqueeze(0)
        omega4 = omega.unsqueeze(0)
        inv_b = (1.0 / bandwidth).view(1, -1, 1, 1)
        g_taps = g_haar = None
        if causal:
            g_q, g_k, g_v, g_b, g_taps = _causal_backward(gy, q, k, v, omega4, omega_t, inv_b, ctx.key_mask, y,
                                                          den, extra, maxes, block_size, chunk_size, offsets,
                                                          normalize, taps)
        else:
            g_q, g_k, g_v, g_b, g_bands = _bidir_backward(gy, q, k, v, omega4, omega_t, inv_b, ctx.key_mask, y,
                                                          den, extra, block_size, offsets, normalize,
                                                          _haar_spec(haar_gains, haar_levels, q.shape[-2]))
            if g_bands is not None:
                g_haar = torch.cat(g_bands, dim=1)
        # g_b is dL/db already (_features_backward differentiates x^ = u / b with respect to b).
        return (g_q, g_k, g_v, None, g_b.to(bandwidth.dtype), None, None, None, None, None, None, None,
                g_taps, None, g_haar)


def favor_attention(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *, causal: bool,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, block_size: int = 2048,
    key_shift: Tensor | str | None = None, normalize: bool = True, taps: Tensor | None = None,
    haar_gains: list[Tensor] | None = None,
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
            ``"max"``: bidirectional, each (batch row, head)'s max key exponent over its
            real keys; causal, each query's running max over the real keys it sees
            (:mod:`~wersa.ops.running_max_attention`'s rule).
        normalize: l2-normalise ``q`` and ``k`` before dividing by ``b`` (WERSA); ``False``
            only divides (Performer, with ``b = 1`` and inputs already scaled).
        taps: causal only, ``(B, N, J)`` (differentiable): ``q`` and ``k`` are first filtered
            by causal taps, ``x~[t] = sum_j taps[t, j] x[t - j]`` (zeros before the start;
            WERSA's causal Haar pyramid in window form,
            :func:`~wersa.ops.causal_pyramid.pyramid_delay_weights`), block by block, so the
            filtered ``q`` and ``k`` are never stored.
        haar_gains: bidirectional only, the band gains of :func:`~wersa.ops.haar.haar_filter`
            (DWT order, ``L + 1`` tensors ``(B, n_band)``, differentiable): ``q`` and ``k`` are
            first Haar-filtered, block by block (the filter is local to aligned blocks of
            ``2^L`` tokens), so the filtered ``q`` and ``k`` are never stored.
    Returns:
        ``(B, H, N, d)`` in the dtype of ``q`` (callers pass fp32 or fp64), stored token-major
        (``y.transpose(1, 2)`` is contiguous), so merging the heads is a view.
    """
    if chunk_size <= 0 or block_size <= 0:
        raise ValueError(f"chunk_size and block_size must be positive, got {chunk_size}, {block_size}")
    _check_key_shift(key_shift)
    if taps is not None:
        if not causal or isinstance(key_shift, str):
            raise ValueError("taps: only the causal form with a constant key shift filters queries and keys")
        if taps.dim() != 3 or tuple(taps.shape[:2]) != (q.shape[0], q.shape[-2]):
            raise ValueError(f"taps must be (B, N, J) = ({q.shape[0]}, {q.shape[-2]}, J), got {tuple(taps.shape)}")
    haar_levels, haar_cat = 0, None
    if haar_gains is not None:
        if causal or isinstance(key_shift, str):
            raise ValueError("haar_gains: only the bidirectional form with a constant key shift filters q and k")
        haar_levels = max(len(haar_gains) - 1, 0)
        sizes = band_sizes(q.shape[-2], haar_levels)
        if [tuple(g.shape) for g in haar_gains] != [(q.shape[0], n) for n in sizes]:
            raise ValueError(f"haar_gains must be L + 1 band gains (B, n_band) in DWT order, sizes {sizes} for "
                             f"{q.shape[-2]} tokens; got {[tuple(g.shape) for g in haar_gains]}")
        haar_cat = torch.cat([g.to(q.dtype) for g in haar_gains], dim=1)
        block_size = -(-block_size // (1 << haar_levels)) * (1 << haar_levels)  # blocks of whole Haar blocks
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
                                 key_shift, bool(normalize), None if taps is None else taps.to(dtype), haar_levels,
                                 haar_cat)


@torch.no_grad()
def favor_attention_with_state(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, block_size: int = 2048,
    key_shift: Tensor | str | None = None, normalize: bool = True,
) -> tuple[Tensor, LinearAttentionState | RunningMaxState]:
    """Causal forward only (no autograd), also returning the running sums after the last token (prefill).

    With ``key_shift="max"`` the sums are relative to the final running max ``M`` of the
    unshifted key exponents, and hold the keys' ``m^{-1/2}``: a :class:`RunningMaxState`
    ``(S, z, M)`` whose ``S, z`` times ``sqrt(m)`` are the running sums of
    :func:`~wersa.ops.running_max_attention.running_max_attention` (whose queries carry it).
    """
    key_max = _check_key_shift(key_shift)
    block_size = -(-block_size // chunk_size) * chunk_size
    dtype = q.dtype
    omega = omega.to(dtype)
    y, _, _, _, state, run_max = _causal_forward(
        q, k.to(dtype), v.to(dtype), omega.transpose(-1, -2).unsqueeze(0),
        (1.0 / bandwidth.to(dtype)).view(1, -1, 1, 1), key_mask, eps, block_size, chunk_size,
        _offsets(omega, None if key_max else key_shift), normalize=normalize, key_max=key_max)
    d = v.shape[-1]
    S, z = state[..., :d].contiguous(), state[..., d].contiguous()
    return y, (RunningMaxState(S, z, run_max) if key_max else LinearAttentionState(S, z))


def favor_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, omega: Tensor, bandwidth: Tensor, *, causal: bool,
    key_mask: Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64, key_shift: Tensor | str | None = None,
    normalize: bool = True,
) -> Tensor:
    """The unfused composition :func:`favor_attention` must equal (values and gradients)."""
    b = bandwidth.view(1, -1, 1, 1)
    qn, kn = (F.normalize(x, dim=-1, eps=_NORM_EPS) if normalize else x for x in (q, k))
    phi_q = softmax_kernel_features(qn / b, omega, stabilize=True)
    if isinstance(key_shift, str):  # "max": unshifted key exponents, -inf at padded keys
        exponent = (kn / b) @ omega.transpose(-1, -2) - 0.5 * ((kn / b) ** 2).sum(-1, keepdim=True)
        if key_mask is not None:
            exponent = exponent.masked_fill(~key_mask[:, None, :, None], float("-inf"))
    if isinstance(key_shift, str) and causal:  # each query's running max over the keys it sees
        # the keys' m^{-1/2} rides on the queries, as in the Performer's plain path
        return running_max_attention_reference(phi_q / math.sqrt(omega.shape[-2]), exponent, v, eps=eps)
    if isinstance(key_shift, str):  # the max over each (row, head)'s real keys, detached
        top = exponent.detach().amax(dim=(-1, -2), keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        phi_k = torch.exp(exponent - top) / math.sqrt(omega.shape[-2])
    else:
        phi_k = softmax_kernel_features(kn / b, omega, stabilize=False, shift=key_shift)
    if causal:
        return causal_linear_attention(phi_q, phi_k, v, key_mask=key_mask, eps=eps, chunk_size=chunk_size)
    return linear_attention(phi_q, phi_k, v, key_mask=key_mask, eps=eps)
