"""Depthwise 1-D convolution on token-major data, forward and backward made of fast kernels.

``torch.nn.functional.conv1d(x, w, b, groups=C)`` with ``w`` of shape ``(C, 1, K)``
computes ``y[b, c, t] = bias[c] + sum_k w[c, k] x[b, c, t + k]``. Sequence models hold
``x`` token-major, ``(B, N, C)`` in memory, so ``x (B, C, N)`` is a transposed view of it.
On CPU the library's paths for this case are slow where it matters:

* ``conv1d`` wants channel-major ``(B, C, N)`` memory, so its input (and its padding) is a
  copy of ``x`` (and of the gradient in the backward pass);
* its weight gradient runs far slower than its forward at long sequences (measured: 2.2 s
  against 0.09 s for the forward at 16k tokens, 512 channels, ``K = 33``).

This node reads and writes token-major memory directly: a ``(B, C, 1, N)`` view of it is a
channels-last 2-D image, which oneDNN convolves in place (5x faster than ``conv1d`` on the
transposed copy at 64k tokens, 512 channels). Both gradients are convolutions too:

* ``dL/dx[s] = sum_k w[k] dy[s + left - k]``: ``dy`` (token-major, as it arrives) convolved
  with the flipped kernel;
* ``dL/dw[k] = sum_t x_pad[t + k] dy[t]``: per channel, the correlation of the padded input
  with ``dy``, as a convolution with ``dy`` as the kernel, over chunks of
  :data:`WEIGHT_GRAD_CHUNK` tokens (one convolution over the whole sequence would pass over
  all of it once per tap; a chunk stays in cache for its ``K`` taps).

Zero padding ``(left, right)`` happens inside the convolutions (symmetric padding, then the
needed window of the output), so no padded copy of ``x`` is made in the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import compute_dtype

WEIGHT_GRAD_CHUNK = 512  # tokens per convolution of the weight gradient


def _image(x: Tensor) -> Tensor:
    """``(B, C, L) -> (B, C, 1, L)`` in channels-last memory (a view when ``x`` is token-major)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _padded_conv(x4: Tensor, weight4: Tensor, bias: Tensor | None, left: int, right: int) -> Tensor:
    """Depthwise convolution of ``x4 (B, C, 1, L)`` zero-padded by ``(left, right)``: ``(B, C, L')``,
    ``L' = L + left + right - K + 1``. The convolution pads both sides by ``max(left, right)``
    and the window that ``(left, right)`` would give is returned (a view)."""
    pad = max(left, right)
    out_len = x4.shape[-1] + left + right - weight4.shape[-1] + 1
    y = F.conv2d(x4, weight4, bias, padding=(0, pad), groups=weight4.shape[0])
    return y[..., pad - left: pad - left + out_len].squeeze(2)


def _weight_grad(x: Tensor, gy: Tensor, left: int, right: int, K: int) -> Tensor:
    """``sum_{b,t} x_pad[b, c, t + k] gy[b, c, t]`` -> ``(C, 1, K)``; ``x (B, C, L)``, ``gy (B, C, n)``."""
    B, C, L = x.shape
    n = gy.shape[-1]
    tokens = x.permute(2, 0, 1)  # (L, B, C): a view when x is token-major
    g_w = x.new_zeros(B * C, K)
    for s in range(0, n, WEIGHT_GRAD_CHUNK):
        t = min(s + WEIGHT_GRAD_CHUNK, n)
        # Padded rows [s, t + K - 1) are x's rows [s - left, t + K - 1 - left): zeros outside x,
        # so only the first and last chunks are padded (small copies), never the whole input.
        lo, hi = s - left, t + K - 1 - left
        xs = tokens[max(lo, 0):min(hi, L)]
        if lo < 0 or hi > L:
            xs = F.pad(xs, (0, 0, 0, 0, max(-lo, 0), max(hi - L, 0)))
        # (T+K-1, B, C) -> (1, B*C, 1, T+K-1), channels-last (copied only when B > 1)
        xs = xs.reshape(t - s + K - 1, 1, 1, B * C).permute(1, 3, 2, 0)
        kernel = gy[..., s:t].reshape(B * C, 1, 1, t - s)  # dy of the chunk as one kernel per (row, channel)
        g_w += F.conv2d(xs.contiguous(memory_format=torch.channels_last), kernel.contiguous(),
                        groups=B * C).view(B * C, K)
    return g_w.view(B, C, K).sum(0).unsqueeze(1)


class _DepthwiseConv1d(torch.autograd.Function):
    # Half-precision inputs are convolved in float32: oneDNN's bfloat16 depthwise kernels do
    # not return for some channel counts (16 and fewer, torch 2.13 on CPU), and the gate
    # convolution is cheap next to the projections.
    @staticmethod
    def forward(ctx, x, weight, bias, left, right):
        # The unpadded input is saved (a view of the caller's token-major tensor, which is
        # often kept alive anyway); no padded copy exists at any point.
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.padding = (left, right)
        work = compute_dtype(x.dtype)
        y = _padded_conv(_image(x.to(work)), weight.to(work).unsqueeze(2), None if bias is None else bias.to(work),
                         left, right)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        left, right = ctx.padding
        K = weight.shape[-1]
        work = compute_dtype(x.dtype)
        gy = gy.to(work)
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            # dy padded by (K-1-left, K-1-right), convolved with the flipped kernel: length L.
            g_x = _padded_conv(_image(gy), weight.to(work).flip(-1).unsqueeze(2), None, K - 1 - left,
                               K - 1 - right).to(x.dtype)
        if ctx.needs_input_grad[1]:
            g_w = _weight_grad(x.to(work), gy, left, right, K).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            g_b = gy.sum(dim=(0, 2)).to(ctx.bias_dtype)
        return g_x, g_w, g_b, None, None


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                     padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``F.conv1d(F.pad(x, padding), weight, bias, groups=C)`` for ``x (B, C, L)``, ``weight (C, 1, K)``;
    same values and gradients. Fastest when ``x`` is a transposed view of token-major
    ``(B, L, C)`` memory; the output ``(B, C, L')`` is a view of token-major memory too.
    ``padding``: zeros added ``(left, right)``, inside the node, so only ``x`` is saved for
    the backward pass."""
    if weight.dim() != 3 or weight.shape[1] != 1 or x.dim() != 3 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"expected x (B, C, L) and a depthwise weight (C, 1, K), got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    left, right = (int(p) for p in padding)
    if left < 0 or right < 0:
        raise ValueError(f"padding must be two non-negative ints (left, right), got {padding!r}")
    if x.shape[-1] + left + right < weight.shape[-1]:
        raise ValueError(f"the padded input ({x.shape[-1]} + {left} + {right} positions) is shorter than the "
                         f"kernel ({weight.shape[-1]} taps)")
    return _DepthwiseConv1d.apply(x, weight, bias, left, right)
