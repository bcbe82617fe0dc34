"""Token compaction: move the real tokens of each sequence to its front.

Mechanisms whose output depends on *where* a token sits (block-local attention,
neighbourhood windows, convolutions) cannot honour a padding mask by merely
excluding padded keys: left padding, or padding in the middle, shifts block
boundaries, window borders and convolution taps. Compacting the real tokens to
the front of each row, in their original order, makes every such mechanism see
exactly the unpadded sequence (followed by padding it can exclude with a
per-row length), whatever the padding pattern. The outputs are then put back in
place with the inverse permutation.

This matches the recurrent semantics of the library: a padded ``step`` leaves
the state unchanged, so a decoder also "skips" padded tokens.

Shapes: ``mask`` ``(B, N)`` bool; ``x`` ``(B, N, ...)``. Cost ``O(B N log N)``
for the sort (integer keys), ``O(B N D)`` for the gathers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Compaction(NamedTuple):
    """``perm``: ``(B, N)`` source index of each compacted slot; ``inverse``: ``(B, N)``
    compacted slot of each original position; ``lengths``: ``(B,)`` real tokens per row."""

    perm: Tensor
    inverse: Tensor
    lengths: Tensor


def compaction(mask: Tensor) -> Compaction:
    """Permutation putting the real tokens (``mask`` True) first, in their original order."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool (B, N) tensor, got {mask.dtype} {tuple(mask.shape)}")
    n = mask.shape[1]
    pos = torch.arange(n, device=mask.device)
    # Unique integer keys: real tokens sort before padded ones, each group in order.
    key = (~mask).to(torch.long) * n + pos
    perm = key.argsort(dim=1)
    inverse = perm.argsort(dim=1)
    return Compaction(perm, inverse, mask.sum(dim=1))


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``out[b, i] = x[b, index[b, i]]`` for ``x`` ``(B, N, ...)`` and ``index`` ``(B, N)``."""
    idx = index.view(index.shape + (1,) * (x.dim() - 2)).expand(index.shape + x.shape[2:])
    return x.gather(1, idx)
