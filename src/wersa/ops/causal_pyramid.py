"""The causal Haar pyramid: WERSA's multi-resolution filter that never sees the future.

A bidirectional Haar DWT mixes every token of an aligned block of ``2^L`` tokens,
so gating its bands lets a token see up to ``2^L - 1`` future tokens. The causal
mode instead uses the stationary ("a trous") Haar analysis with trailing windows::

    A_0 = x,   A_l[t] = mean(x[t - 2^l + 1 .. t])   (zeros before the start)
    D_l = A_{l-1} - A_l
    y[t] = sum_{l=1..L} g_l[t] D_l[t] + g_0[t] A_L[t]

It telescopes to ``x`` when all gains are equal to 1 (to ``c x`` when all equal
``c``). The means are computed by the recursion
``A_l[t] = (A_{l-1}[t] + A_{l-1}[t - 2^{l-1}]) / 2`` (a shift and an add per level),
which costs ``O(N L d)`` and, unlike a global prefix sum, loses no precision at
128k tokens. Decoding needs only the last ``2^L - 1`` inputs.

Gains are ``(B, N, L + 1)``: index 0 is the approximation band ``A_L``, index
``l`` the detail band ``D_l`` (1 = finest).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _shift(x: Tensor, s: int) -> Tensor:
    """``x`` delayed by ``s`` positions along axis -2, zeros entering at the start."""
    n = x.shape[-2]
    if s >= n:
        return torch.zeros_like(x)
    return F.pad(x, (0, 0, s, 0))[..., :n, :]


def _gain(gains: Tensor, band: int, like: Tensor) -> Tensor:
    g = gains[..., band]  # (B, N)
    return g.reshape(g.shape[0], *([1] * (like.dim() - 3)), g.shape[1], 1).to(like.dtype)


def causal_haar_pyramid(x: Tensor, gains: Tensor, levels: int) -> Tensor:
    """Causally filter ``x`` (``(B, ..., N, d)``) with per-token band gains ``(B, N, L+1)``."""
    if gains.shape[-1] != levels + 1:
        raise ValueError(f"gains must have {levels + 1} bands in the last axis, got {gains.shape[-1]}")
    out = None
    prev = x
    for level in range(1, levels + 1):
        cur = 0.5 * (prev + _shift(prev, 2 ** (level - 1)))
        term = _gain(gains, level, x) * (prev - cur)
        out = term if out is None else out + term
        prev = cur
    term = _gain(gains, 0, x) * prev
    return term if out is None else out + term


def causal_haar_pyramid_reference(x: Tensor, gains: Tensor, levels: int) -> Tensor:
    """Per-position form: window means computed directly from the definition."""
    n = x.shape[-2]
    outs = []
    for t in range(n):
        means = [x[..., t, :]]
        for level in range(1, levels + 1):
            lo = t - 2 ** level + 1
            window = x[..., max(lo, 0):t + 1, :]
            means.append(window.sum(-2) / 2 ** level)  # zeros before the start
        y = 0
        for level in range(1, levels + 1):
            g = gains[:, t, level].reshape(-1, *([1] * (x.dim() - 2))).to(x.dtype)
            y = y + g * (means[level - 1] - means[level])
        g0 = gains[:, t, 0].reshape(-1, *([1] * (x.dim() - 2))).to(x.dtype)
        outs.append(y + g0 * means[levels])
    return torch.stack(outs, dim=-2)


def causal_haar_pyramid_step(x_t: Tensor, history: Tensor, gains_t: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """One token of the causal pyramid.

    Args:
        x_t: ``(B, ..., d)`` the new input.
        history: ``(B, ..., 2^L - 1, d)`` the previous inputs, oldest first (zeros
            before the start of the sequence).
        gains_t: ``(B, L + 1)``.
    Returns:
        ``(B, ..., d)`` output and the updated history.
    """
    window = torch.cat([history, x_t.unsqueeze(-2)], dim=-2)  # (..., 2^L, d), newest last
    g = gains_t.reshape(gains_t.shape[0], *([1] * (x_t.dim() - 1)), gains_t.shape[-1]).to(x_t.dtype)
    prev = x_t
    y = torch.zeros_like(x_t)
    for level in range(1, levels + 1):
        cur = window[..., -(2 ** level):, :].mean(-2)
        y = y + g[..., level] * (prev - cur)
        prev = cur
    y = y + g[..., 0] * prev
    return y, window[..., 1:, :]


def pyramid_window_weights(levels: int, dtype=None, device=None) -> Tensor:
    """The pyramid's output at one token as weights over its window: ``(L + 1, 2^L)``.

    With ``A_0 = x_t`` and ``A_l`` the mean of the last ``2^l`` inputs, the output
    ``g_0 A_L + sum_l g_l (A_{l-1} - A_l)`` is ``(g @ W) . window`` for the window
    ``x_{t-2^L+1} .. x_t`` (oldest first): row ``0`` of ``W`` holds ``A_L``'s weights, row
    ``l`` those of ``A_{l-1} - A_l``. One small product per token instead of ``L`` means
    (:func:`causal_haar_pyramid_step` is the reference).
    """
    n = 2 ** levels
    mean_of_last = torch.zeros(levels + 1, n, dtype=torch.float64)
    for level in range(levels + 1):
        mean_of_last[level, n - 2 ** level:] = 1.0 / 2 ** level
    w = torch.empty_like(mean_of_last)
    w[0] = mean_of_last[levels]
    w[1:] = mean_of_last[:-1] - mean_of_last[1:]
    return w.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _advance(x: Tensor, s: int) -> Tensor:
    """Adjoint of :func:`_shift`: ``x`` advanced by ``s`` positions, zeros entering at the end."""
    n = x.shape[-2]
    if s >= n:
        return torch.zeros_like(x)
    return F.pad(x, (0, 0, 0, s))[..., s:, :]


class _CausalPyramidLean(torch.autograd.Function):
    """:func:`causal_haar_pyramid` that saves only its inputs.

    Autograd through the pyramid keeps one ``x``-sized band per level. Here the
    means are recomputed in the backward pass. Writing the output as
    ``y = sum_l c_l * A_l`` with ``c_0 = g_1``, ``c_l = g_{l+1} - g_l`` and
    ``c_L = g_0 - g_L`` (``c_0 = g_0`` when ``L = 0``), and
    ``A_l = M_l A_{l-1}`` with ``M_l = (I + delay_{2^{l-1}}) / 2``, the input
    gradient is a Horner scheme with the adjoint (advance) of each delay::

        r = c_L dy;  for l = L..1:  r = M_l^T r + c_{l-1} dy;   dL/dx = r
    """

    @staticmethod
    def forward(ctx, x, gains, levels):
        ctx.levels = levels
        ctx.save_for_backward(x, gains)
        return causal_haar_pyramid(x, gains, levels)

    @staticmethod
    def backward(ctx, gy):
        x, gains = ctx.saved_tensors
        L = ctx.levels
        g = [_gain(gains, band, x) for band in range(L + 1)]
        g_x = g_gains = None
        if ctx.needs_input_grad[0]:
            if L == 0:
                coef = [g[0]]
            else:
                coef = [g[1]] + [g[l + 1] - g[l] for l in range(1, L)] + [g[0] - g[L]]
            r = coef[L] * gy
            for level in range(L, 0, -1):
                r = 0.5 * (r + _advance(r, 2 ** (level - 1))) + coef[level - 1] * gy
            g_x = r
        if ctx.needs_input_grad[1]:
            shared = tuple(range(1, x.dim() - 2)) + (x.dim() - 1,)
            cols = []
            prev = x
            details = []
            for level in range(1, L + 1):
                cur = 0.5 * (prev + _shift(prev, 2 ** (level - 1)))
                details.append((gy * (prev - cur)).sum(dim=shared))
                prev = cur
            cols = [(gy * prev).sum(dim=shared)] + details
            g_gains = torch.stack(cols, dim=-1).to(gains.dtype)
        return g_x, g_gains, None


def pyramid_delay_weights(gains: Tensor, levels: int) -> Tensor:
    """Per-token weights of the pyramid's window, by delay: ``(B, N, L+1) -> (B, N, 2^L)``.

    Entry ``s`` weighs the input ``s`` tokens back (``0`` is the token itself): the pyramid's
    output is ``y[t] = sum_s w[t, s] x[t - s]`` (zeros before the start).
    """
    return (gains @ pyramid_window_weights(levels, dtype=gains.dtype, device=gains.device)).flip(-1)


# Tokens per block of the gains' gradient reduction (bounds its temporaries).
_REDUCE_BLOCK = 4096


def _tap_weights(w: Tensor, like: Tensor) -> Tensor:
    """``w (B, N, J)`` shaped ``(B, 1.., N, J)`` to broadcast against ``like`` ``(B, ..., N, d)``."""
    return w.reshape(w.shape[0], *([1] * (like.dim() - 3)), w.shape[1], w.shape[2]).to(like.dtype)


def window_taps_rows(x: Tensor, w: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the causal window filter ``y[t] = sum_j w[t, j] x[t - j]``.

    ``x (B, ..., N, d)``, ``w (B, N, J)`` (zeros before the start of ``x``). Each delay is one
    in-place multiply-add over shifted views; rows before ``start`` are read, never written,
    so a consumer can filter block by block.
    """
    wb = _tap_weights(w, x)
    out = x[..., start:stop, :] * wb[..., start:stop, 0:1]
    for j in range(1, w.shape[-1]):
        lo = max(start, j)  # the first output whose input j rows back exists
        if lo < stop:
            out[..., lo - start:, :].addcmul_(wb[..., lo:stop, j:j + 1], x[..., lo - j:stop - j, :])
    return out


def window_taps_rows_backward(g: Tensor, x: Tensor, w: Tensor, start: int, stop: int,
                              g_x: Tensor | None, g_w: Tensor | None) -> None:
    """Accumulate the gradients of :func:`window_taps_rows` given ``g (B, ..., stop - start, d)``:
    ``g_x[t - j] += w[t, j] g[t]`` (reaching before ``start``) and ``g_w[t, j] += <g[t], x[t - j]>``
    summed over the middle axes and ``d``. Either target may be ``None`` (not needed)."""
    wb = _tap_weights(w, x)
    shared = tuple(range(1, x.dim() - 2)) + (x.dim() - 1,)
    for j in range(w.shape[-1]):
        lo = max(start, j)
        if lo < stop:
            gj, xj = g[..., lo - start:, :], x[..., lo - j:stop - j, :]
            if g_x is not None:
                g_x[..., lo - j:stop - j, :].addcmul_(wb[..., lo:stop, j:j + 1], gj)
            if g_w is not None:
                g_w[:, lo:stop, j] += (gj * xj).sum(dim=shared)


class _CausalPyramidTaps(torch.autograd.Function):
    """:func:`causal_haar_pyramid` as ``2^L`` taps per token, saving only its inputs.

    The output at ``t`` is ``sum_s w_s[t] x[t - s]`` over the window's ``2^L`` delays,
    with ``w[t] = g[t] @ W`` (:func:`pyramid_delay_weights`, :func:`window_taps_rows`).
    Each delay is one in-place multiply-add over a shifted view, no copy, so the pass costs
    ``2^L`` sweeps of ``x`` where the level recursion costs about five allocating sweeps per
    level: fewer for ``L <= 4``. The backward pass is the same sweep with the delays
    reversed, and the gains' gradient is ``<dy[t], x[t - s]>`` mapped back through ``W``.
    """

    @staticmethod
    def forward(ctx, x, gains, levels):
        ctx.levels = levels
        ctx.save_for_backward(x, gains)
        return window_taps_rows(x, pyramid_delay_weights(gains, levels), 0, x.shape[-2])

    @staticmethod
    def backward(ctx, gy):
        x, gains = ctx.saved_tensors
        L, n = ctx.levels, x.shape[-2]
        w = pyramid_delay_weights(gains, L)
        g_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        g_w = gy.new_zeros(w.shape) if ctx.needs_input_grad[1] else None
        # Token blocks: the gains' products are block-sized temporaries, not x-sized ones (at 128k
        # tokens one x-sized product is 256 MiB on top of the backward pass's peak).
        for a in range(0, n, _REDUCE_BLOCK):
            b = min(a + _REDUCE_BLOCK, n)
            window_taps_rows_backward(gy[..., a:b, :], x, w, a, b, g_x, g_w)
        g_gains = None
        if g_w is not None:
            window = pyramid_window_weights(L, dtype=g_w.dtype, device=g_w.device)
            g_gains = (g_w.flip(-1) @ window.T).to(gains.dtype)
        return g_x, g_gains, None


# Up to this many levels the taps form makes fewer passes over x than the level recursion.
TAPS_MAX_LEVELS = 4


def causal_haar_pyramid_lean(x: Tensor, gains: Tensor, levels: int) -> Tensor:
    """:func:`causal_haar_pyramid` saving only ``x`` and the gains (same values and gradients).

    Autograd through the plain form keeps one ``x``-sized band per level. Up to
    :data:`TAPS_MAX_LEVELS` levels this runs the window taps (:class:`_CausalPyramidTaps`),
    beyond them the level recursion with its Horner-scheme backward (:class:`_CausalPyramidLean`).
    """
    if gains.shape[-1] != levels + 1:
        raise ValueError(f"gains must have {levels + 1} bands in the last axis, got {gains.shape[-1]}")
    if levels <= TAPS_MAX_LEVELS:
        return _CausalPyramidTaps.apply(x, gains, levels)
    return _CausalPyramidLean.apply(x, gains, levels)
