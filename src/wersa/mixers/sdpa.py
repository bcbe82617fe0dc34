"""Exact attention through PyTorch's fused ``scaled_dot_product_attention``.

``softmax(q k^T / sqrt(d)) v`` without materialising the score matrix where a fused
kernel applies: FlashAttention-2 on CUDA (fp16/bf16, no explicit mask), the fused
flash kernel on CPU. This is the exact reference every approximation is compared
with, and the paper's "FlashAttention-2" baseline.

Masks: a padding mask becomes a boolean ``(B, 1, N, N)`` mask of allowed pairs
(the fused kernels then fall back to the memory-efficient or math path). Every
query may always see itself, so rows whose keys are all padding (pad queries of a
left-padded batch) stay finite; their outputs are zeroed by the base class.

Decoding keeps a KV cache (it grows with the context). The newest query attends to
every cached key: a 1-query ``is_causal=True`` SDPA call would instead attend to
the first key only (top-left alignment), so the step passes no causal flag.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.heads import merge_heads, split_heads
from .base import Capabilities, Mixer
from .registry import register_mixer


@register_mixer
class SDPA(Mixer):
    """Exact multi-head attention via ``F.scaled_dot_product_attention``. ``(B, N, D) -> (B, N, D)``.

    Args:
        dropout: attention dropout in training mode.
        qkv_bias: bias of the fused q/k/v projection ``qkv``.
        out_bias: bias of the output projection ``out_proj``.
    """

    capabilities = Capabilities(
        name="sdpa", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=False, linear_time=False,
        summary="exact softmax attention, fused kernel (FlashAttention-2 on GPU)",
        reference="Vaswani et al. 2017; Dao, FlashAttention-2, arXiv 2307.08691",
    )

    renamed_options = {"bias": ("qkv_bias", "out_bias")}
    renamed_parameters = {"out.": "out_proj."}

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *, dropout: float = 0.0,
                 qkv_bias: bool = False, out_bias: bool = False):
        super().__init__(dim, num_heads, causal)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"sdpa: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D) -> 3 x (B, H, N, d)``."""
        return tuple(split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))

    def _merge(self, y: Tensor) -> Tensor:
        """``(B, H, N, d) -> (B, N, D)`` through ``out_proj``."""
        return self.out_proj(merge_heads(y))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        p = self.dropout if self.training else 0.0
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        n = q.shape[-2]
        allowed = mask[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self._split(x)
        return self._merge(self._attend(q, k, v, mask))

    # --------------------------------------------------------------- KV cache
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        shape = (batch_size, self.num_heads, 0, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "valid": torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        }

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = self._split(x_t.unsqueeze(1))
        keys = torch.cat([state["k"], k], dim=2)
        values = torch.cat([state["v"], v], dim=2)
        valid = torch.cat([state["valid"], state["valid"].new_ones(state["valid"].shape[0], 1)], dim=1)
        # bottom-right alignment: the single new query sees every cached key (no is_causal flag)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=valid[:, None, None, :])
        return self._merge(y).squeeze(1), {"k": keys, "v": values, "valid": valid}

    def _select_state(self, keep: Tensor, new: dict[str, Tensor], old: dict[str, Tensor]) -> dict[str, Tensor]:
        # A padding step still appends a slot (all sequences grow together) but marks it invalid.
        valid = new["valid"].clone()
        valid[:, -1] = keep
        return {"k": new["k"], "v": new["v"], "valid": valid}

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Parallel causal pass over a prompt; returns outputs and the filled KV cache."""
        q, k, v = self._split(x)
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
        return self._merge(self._attend(q, k, v, mask)), {"k": k, "v": v, "valid": valid}
