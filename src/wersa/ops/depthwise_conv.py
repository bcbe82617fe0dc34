"""Depthwise 1-D convolution with a backward pass made of forward convolutions.

``torch.nn.functional.conv1d(x, w, b, groups=C)`` with ``w`` of shape ``(C, 1, K)``
computes ``y[b, c, t] = bias[c] + sum_k w[c, k] x[b, c, t + k]``. On CPU the
library's backward for this case (the weight gradient in particular) runs far
slower than its forward at long sequences (measured: 2.2 s against 0.09 s for the
forward at 16k tokens, 512 channels, ``K = 33``). Both gradients are themselves
depthwise convolutions, so this node computes them with the fast forward kernel:

* ``dL/dx[b, c, s] = sum_k w[c, k] dy[b, c, s - k]``: ``dy`` padded by ``K - 1`` on
  both sides, convolved with the flipped kernel;
* ``dL/dw[c, k] = sum_{b,t} x[b, c, t + k] dy[b, c, t]``: ``x`` convolved with ``dy``
  as the kernel (one group per batch row and channel), summed over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _DepthwiseConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, left, right):
        # The unpadded input is saved (often a view of a tensor kept alive anyway); the
        # backward pass pads it again, so no padded copy outlives the forward pass.
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding = (left, right)
        return F.conv1d(F.pad(x, (left, right)) if left or right else x, weight, bias, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        left, right = ctx.padding
        if left or right:
            x = F.pad(x, (left, right))
        B, C, L = x.shape
        K = weight.shape[-1]
        gy = gy.contiguous()
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = F.conv1d(F.pad(gy, (K - 1, K - 1)), weight.flip(-1), groups=C)
            g_x = g_x[..., left:L - right]  # the padding's own gradient is dropped
        if ctx.needs_input_grad[1]:
            n = gy.shape[-1]
            g_w = F.conv1d(x.reshape(1, B * C, L), gy.reshape(B * C, 1, n), groups=B * C)
            g_w = g_w.view(B, C, K).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = gy.sum(dim=(0, 2))
        return g_x, g_w, g_b, None, None


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                     padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``F.conv1d(F.pad(x, padding), weight, bias, groups=C)`` for ``x (B, C, L)``, ``weight (C, 1, K)``;
    same values and gradients. ``padding``: zeros added ``(left, right)``, inside the node, so
    only the unpadded ``x`` is saved for the backward pass."""
    if weight.dim() != 3 or weight.shape[1] != 1 or x.dim() != 3 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"expected x (B, C, L) and a depthwise weight (C, 1, K), got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    left, right = (int(p) for p in padding)
    if left < 0 or right < 0:
        raise ValueError(f"padding must be two non-negative ints (left, right), got {padding!r}")
    return _DepthwiseConv1d.apply(x, weight, bias, left, right)
