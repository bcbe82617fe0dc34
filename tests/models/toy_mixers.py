"""Two tiny mixers that exercise the model layer independently of the real mechanisms.

* ``_toy_recurrent``: gated running mean of values (causal and bidirectional,
  padding-aware, recurrent with a constant state, a random persistent buffer).
* ``_toy_history``: causal depthwise convolution of width 3, no token-by-token
  form, right padding only: the model decodes it by recomputing over the history.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wersa.mixers.base import Capabilities, Mixer


class ToyRecurrent(Mixer):
    capabilities = Capabilities(
        name="_toy_recurrent", causal=True, bidirectional=True, attention_mask=True,
        recurrent=True, left_padding=True, constant_state=True, summary="test mixer: gated running mean",
    )

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__(dim, num_heads, causal)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        # a random fixed matrix, like random features: must be saved with the model
        self.register_buffer("omega", torch.randn(dim, dim) / dim**0.5)

    def _gate_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.sigmoid(x @ self.omega).mean(-1, keepdim=True) + 0.1  # (.., 1) > 0
        return g, g * self.v(x)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        g, gv = self._gate_values(x)
        if mask is not None:
            m = mask.unsqueeze(-1).to(x.dtype)
            g, gv = g * m, gv * m
        if self.causal:
            num, den = gv.cumsum(1), g.cumsum(1)
        else:
            num, den = gv.sum(1, keepdim=True), g.sum(1, keepdim=True)
        return self.o(num / den.clamp_min(1e-6))

    def _init_state(self, batch_size: int, device, dtype):
        return {"num": torch.zeros(batch_size, self.dim, device=device, dtype=dtype),
                "den": torch.zeros(batch_size, 1, device=device, dtype=dtype)}

    def _step(self, x_t: Tensor, state):
        g, gv = self._gate_values(x_t)
        num, den = state["num"] + gv, state["den"] + g
        return self.o(num / den.clamp_min(1e-6)), {"num": num, "den": den}


class ToyHistory(Mixer):
    capabilities = Capabilities(
        name="_toy_history", causal=True, bidirectional=False, attention_mask=True,
        recurrent=False, left_padding=False, summary="test mixer: causal depthwise conv, width 3",
    )

    def __init__(self, dim: int, num_heads: int, causal: bool = True):
        super().__init__(dim, num_heads, causal)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, groups=dim)
        self.o = nn.Linear(dim, dim)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        h = nn.functional.pad(x.transpose(1, 2), (2, 0))  # left pad: output t sees t-2..t
        return self.o(torch.tanh(self.conv(h)).transpose(1, 2))


TOY_MIXERS = (ToyRecurrent, ToyHistory)
TOY_NAMES = tuple(cls.capabilities.name for cls in TOY_MIXERS)
