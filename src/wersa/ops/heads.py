"""Head bookkeeping shared by every mixer: split, merge, and the compute dtype.

* :func:`split_heads` — ``(B, N, H*d) -> (B, H, N, d)``.
* :func:`merge_heads` — ``(B, H, N, d) -> (B, N, H*d)`` (the inverse).
* :func:`split_qkv_heads` — a fused ``(B, N, 3*H*d)`` projection -> ``q, k, v`` heads, whose
  backward takes gradients that already lie in one buffer laid out like the projection
  (:func:`empty_like_qkv`, as the attention core allocates them) without a copy.
* :func:`compute_dtype` — the dtype reductions run in: half-precision inputs
  (float16, bfloat16) are accumulated in float32 (exponentials, softmax, running sums
  overflow or lose the small terms in half precision); float32/float64 stay as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def split_heads(t: Tensor, num_heads: int) -> Tensor:
    """``(B, N, H*d) -> (B, H, N, d)`` (a view when ``t`` is contiguous)."""
    b, n, width = t.shape
    return t.view(b, n, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """``(B, H, N, d) -> (B, N, H*d)``."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, else ``dtype`` itself."""
    return torch.float32 if dtype in _HALF else dtype


def is_fused_qkv(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether ``q, k, v (B, H, N, d)`` are the heads of one ``(B, N, 3, H, d)`` layout:
    equal shapes and strides, token rows of ``3 H d`` elements, ``k`` and ``v`` at ``H d`` and
    ``2 H d`` elements after ``q`` in the same storage (so the three never overlap)."""
    if not (q.dim() == 4 and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype):
        return False
    B, H, N, d = q.shape
    D = H * d
    if q.stride() != (3 * N * D, d, 3 * D, 1) or k.stride() != q.stride() or v.stride() != q.stride():
        return False
    ptr, off = q.untyped_storage().data_ptr(), q.storage_offset()
    return (k.untyped_storage().data_ptr() == ptr and v.untyped_storage().data_ptr() == ptr
            and k.storage_offset() == off + D and v.storage_offset() == off + 2 * D)


def empty_like_qkv(q: Tensor, k: Tensor, v: Tensor, zero: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Three new tensors shaped like ``q, k, v``; when those are the heads of one fused
    projection (:func:`is_fused_qkv`), they are the same views into one new buffer, so the
    projection's gradient needs no concatenation (:func:`split_qkv_heads`). ``zero``: zero-filled."""
    new = torch.zeros if zero else torch.empty
    if is_fused_qkv(q, k, v):
        flat = new(3 * q.numel(), dtype=q.dtype, device=q.device)
        D = q.shape[1] * q.shape[3]
        return tuple(flat.as_strided(q.shape, q.stride(), i * D) for i in range(3))
    like = torch.zeros_like if zero else torch.empty_like
    return like(q), like(k), like(v)


class _SplitQKVHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, num_heads: int):
        b, n, width = qkv.shape
        ctx.shape = qkv.shape
        parts = qkv.view(b, n, 3, num_heads, width // (3 * num_heads))
        return tuple(parts[:, :, i].transpose(1, 2) for i in range(3))

    @staticmethod
    def backward(ctx, g_q: Tensor, g_k: Tensor, g_v: Tensor):
        b, n, width = ctx.shape
        if is_fused_qkv(g_q, g_k, g_v):  # already one buffer laid out like qkv: a view of it
            return g_q.as_strided(ctx.shape, (n * width, width, 1), g_q.storage_offset()), None
        g = g_q.new_empty(ctx.shape)
        parts = g.view(b, n, 3, g_q.shape[1], g_q.shape[3])
        for i, part in enumerate((g_q, g_k, g_v)):
            parts[:, :, i].copy_(part.transpose(1, 2))
        return g, None


def split_qkv_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, N, 3*H*d)`` -> ``q, k, v`` of shape ``(B, H, N, d)``, views of ``qkv`` (as
    ``split_heads`` of its three chunks). Autograd would join the three gradients with a
    concatenation, a fresh ``(B, N, 3*H*d)`` tensor; here gradients that already lie in one
    buffer laid out like ``qkv`` (:func:`empty_like_qkv`) are passed on as they are."""
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv must be (B, N, 3*H*d) with H = {num_heads}, got {tuple(qkv.shape)}")
    return _SplitQKVHeads.apply(qkv, num_heads)
