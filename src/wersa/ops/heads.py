"""Head bookkeeping shared by every mixer: split, merge, and the compute dtype.

* :func:`split_heads` — ``(B, N, H*d) -> (B, H, N, d)``.
* :func:`merge_heads` — ``(B, H, N, d) -> (B, N, H*d)`` (the inverse).
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
