"""Mamba: the selective state-space (S6) token mixer, causal, with a constant-size state.

Reference: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv 2312.00752; block of ``state-spaces/mamba`` ``modules/mamba_simple.py``.

Block, for ``x`` of shape ``(B, L, D)`` and ``E = expand * D`` inner channels::

    (u, z)      = in_proj(x)                                  # D -> 2E, no bias
    u           = silu(causal_depthwise_conv1d(u))            # kernel conv_size, left padding only
    (dt, B, C)  = x_proj(u)                                   # E -> dt_rank + 2 * G * N, no bias
    delta       = softplus(dt_proj(dt))                       # dt_rank -> E; bias = softplus^-1(dt0)
    A           = -exp(A_log)                                 # (E, N), S4D-real init A[:, n] = -(n+1)
    h_t         = exp(delta_t A) h_{t-1} + delta_t B_t u_t    # ZOH for A, Euler for B (as the reference)
    y_t         = C_t . h_t + D_skip u_t
    out         = out_proj(y * silu(z))                       # E -> D, no bias

Defaults: ``d_state N = 16``, ``conv_size = 4``, ``expand = 2``, ``dt_rank = ceil(D / 16)``,
``dt_min = 1e-3``, ``dt_max = 0.1``, ``dt_init_floor = 1e-4``, ``dt_scale = 1``,
``conv_bias = True``, ``bias = False``. ``dt0 ~ logUniform[dt_min, dt_max]`` floored at
``dt_init_floor``; ``dt_proj.weight ~ U(+-dt_scale * dt_rank^-1/2)``. ``A_log`` and ``D_skip``
carry ``_no_weight_decay = True`` (as upstream) for optimisers that honour it.

``num_heads`` does not enter the block: Mamba has no heads, and the paper's S6 block has
one input-dependent ``B`` and ``C`` shared by all ``E`` channels, whatever ``num_heads``
a model passes. ``num_groups=G > 1`` (an option, not the paper's) gives each of ``G``
groups of channels its own selection (channel ``e`` reads group ``e // (E / G)``, as
Mamba-2's ``ngroups``), at ``2 (G - 1) N`` extra ``x_proj`` outputs per token.

Computation: training and ``forward`` use the two-level parallel scan of
:mod:`wersa.ops.selective_scan` (float32, ``O(L E N)`` work in ``chunk_size + L / chunk_size``
vectorised steps per block, activation checkpointing per block when training);
``step`` updates a conv state ``(B, E, conv_size - 1)`` (the previous conv inputs)
and an SSM state ``(B, E, N)`` (float32); ``prefill`` runs the parallel scan and returns
both. The mixer is causal only: ``causal=False`` raises (a bidirectional variant would
be a second, reversed scan and is not provided).

Padding (any pattern: left, right, interior): the real tokens are first moved to the front
in order (:mod:`wersa.ops.compaction`), so the causal conv sees exactly the unpadded
sequence, as token-by-token decoding (which skips padded steps) does. The trailing pads then
contribute nothing: their conv input is zeroed and their ``delta`` is 0, which makes their
decay the identity and their ``delta * B * u`` input zero, so the state passes through them.

Pitfalls of the reference and how this file avoids them: the scan runs in float32
whatever the module dtype (fp16/bf16 decays underflow); ``exp(cumsum(delta A))``
overflows when divided out, so the scan only ever multiplies decays ``<= 1``; the conv is
padded on the left only; the reference's ``(B, E, L, N)`` materialisation is replaced by
blocks (and activation checkpointing per block when training).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.compaction import compaction, gather_tokens
from ..ops.selective_scan import selective_scan, selective_scan_step
from .base import Capabilities, Mixer
from .registry import register_mixer


class MambaState(NamedTuple):
    """Decoding state. conv: ``(B, E, conv_size - 1)`` last conv inputs (module dtype);
    ssm: ``(B, E, N)`` (float32, float64 for a float64 module)."""

    conv: Tensor
    ssm: Tensor


@register_mixer
class Mamba(Mixer):
    """Selective SSM (S6) block: ``(B, N, D) -> (B, N, D)``. See the module docstring."""

    renamed_options = {"d_conv": "conv_size"}

    example_options = ({"chunk_size": 4, "d_state": 4}, {"chunk_size": 64, "conv_size": 2, "expand": 1})
    capabilities = Capabilities(
        name="mamba", causal=True, bidirectional=False, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="selective state-space model (S6, the paper's block): input-dependent delta, B, C; "
                "causal conv + two-level parallel scan; causal only",
        reference="Gu & Dao, Mamba: Linear-Time Sequence Modeling with Selective State Spaces, "
                  "arXiv 2312.00752",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        d_state: int = 16, conv_size: int = 4, expand: int = 2, dt_rank: int | None = None,
        dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0, conv_bias: bool = True, bias: bool = False,
        num_groups: int = 1, chunk_size: int = 16, seed: int | None = None,
    ):
        super().__init__(dim, num_heads, causal)
        name = self.capabilities.name
        for opt, val in (("d_state", d_state), ("conv_size", conv_size), ("expand", expand),
                         ("num_groups", num_groups), ("chunk_size", chunk_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"{name}: {opt} must be a positive integer, got {val!r}")
        dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        if not isinstance(dt_rank, int) or dt_rank <= 0:
            raise ValueError(f"{name}: dt_rank must be a positive integer or None, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.conv_size, self.expand, self.dt_rank = d_state, conv_size, expand, dt_rank
        self.d_inner = expand * dim
        if self.d_inner % num_groups != 0:
            raise ValueError(f"{name}: num_groups={num_groups} must divide the {self.d_inner} inner channels "
                             f"(expand * dim)")
        # num_heads does not enter the S6 block: one B/C selection for all channels (the paper's).
        self.num_groups = num_groups
        self.chunk_size = chunk_size
        E, N, G = self.d_inner, d_state, self.num_groups

        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        self.in_proj = nn.Linear(dim, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, conv_size, groups=E, bias=conv_bias)
        self.x_proj = nn.Linear(E, dt_rank + 2 * G * N, bias=False)
        self.dt_proj = nn.Linear(dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, dim, bias=bias)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        with torch.no_grad():
            std = dt_rank ** -0.5 * dt_scale
            self.dt_proj.weight.copy_(torch.rand(E, dt_rank, generator=gen) * 2 * std - std)
            dt = torch.exp(torch.rand(E, generator=gen) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            if gen is not None:  # reproducible init of the remaining layers as well
                for lin in (self.in_proj, self.x_proj, self.out_proj):
                    bound = lin.in_features ** -0.5
                    lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
                    if lin.bias is not None:
                        lin.bias.zero_()

    # ----------------------------------------------------------------- helpers
    def _ssm_params(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``u (..., E)`` -> ``delta (..., E)`` (float32), ``B, C (..., G, N)``."""
        G, N = self.num_groups, self.d_state
        dbc = self.x_proj(u)
        dt, Bm, Cm = torch.split(dbc, [self.dt_rank, G * N, G * N], dim=-1)
        cd = torch.float64 if u.dtype == torch.float64 else torch.float32
        delta = F.softplus(self.dt_proj(dt).to(cd))
        return delta, Bm.unflatten(-1, (G, N)), Cm.unflatten(-1, (G, N))

    def _A(self) -> Tensor:
        cd = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
        return -torch.exp(self.A_log.to(cd))

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight[:, 0, :]  # (E, conv_size)

    # ----------------------------------------------------------------- forward
    def _run(self, x: Tensor, mask: Tensor | None, return_state: bool):
        L = x.shape[1]
        comp = None
        if mask is not None:
            # Real tokens to the front (in order), as stepping sees them: an interior pad
            # must not occupy a tap of the causal conv. Only right padding remains.
            comp = compaction(mask)
            x = gather_tokens(x, comp.perm)
            mask = torch.arange(L, device=x.device) < comp.lengths.unsqueeze(1)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        if mask is not None:
            u = u * mask.unsqueeze(-1).to(u.dtype)  # padded tokens feed zeros to the conv
        conv_in = u
        uc = self.conv1d(F.pad(u.transpose(1, 2), (self.conv_size - 1, 0)))[..., :L]  # causal
        uc = F.silu(uc).transpose(1, 2)  # (B, L, E)
        delta, Bm, Cm = self._ssm_params(uc)
        if mask is not None:
            delta = delta * mask.unsqueeze(-1).to(delta.dtype)  # pads: identity decay, no input
        y, h = selective_scan(uc, delta, self._A(), Bm, Cm, self.D, z,
                              chunk_size=self.chunk_size, return_state=True)
        out = self.out_proj(y)
        if comp is not None:
            out = gather_tokens(out, comp.inverse)
        if not return_state:
            return out
        return out, MambaState(self._last_conv_inputs(conv_in, mask), h)

    def _last_conv_inputs(self, u: Tensor, mask: Tensor | None) -> Tensor:
        """``(B, E, conv_size - 1)``: the last ``conv_size - 1`` real conv inputs of each row
        (zeros in front when there are fewer), whatever the padding side."""
        k1 = self.conv_size - 1
        Bsz, L, E = u.shape
        if k1 == 0:
            return u.new_zeros(Bsz, E, 0)
        if mask is None:
            mask = torch.ones(Bsz, L, dtype=torch.bool, device=u.device)
        rank = mask.long().cumsum(1)  # 1-based rank of each real token
        slot = rank - rank[:, -1:] + k1 - 1  # slot of the last real token is k1 - 1
        slot = torch.where(mask & (slot >= 0), slot, torch.full_like(slot, k1))  # k1 = discard
        buf = u.new_zeros(Bsz, k1 + 1, E)
        buf = buf.scatter(1, slot.unsqueeze(-1).expand(Bsz, L, E), u)
        return buf[:, :k1].transpose(1, 2).contiguous()

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return self._run(x, mask, return_state=False)

    # --------------------------------------------------------------- recurrent
    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, MambaState]:
        """Parallel scan over a prompt ``(B, L, D)``: ``(outputs (B, L, D), state)``."""
        return self._run(x, mask, return_state=True)

    def _init_state(self, batch_size: int, device, dtype) -> MambaState:
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        return MambaState(
            torch.zeros(batch_size, self.d_inner, self.conv_size - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=sd),
        )

    def _step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        if not isinstance(state, MambaState):
            raise TypeError(f"mamba: state must be the MambaState from init_state/prefill, "
                            f"got {type(state).__name__}")
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        window = torch.cat([state.conv.to(u.dtype), u.unsqueeze(-1)], dim=-1)  # (B, E, conv_size)
        uc = (window * self._conv_weight()).sum(-1)
        if self.conv1d.bias is not None:
            uc = uc + self.conv1d.bias
        uc = F.silu(uc)
        delta, Bm, Cm = self._ssm_params(uc)
        y, h = selective_scan_step(uc, delta, self._A(), Bm, Cm, state.ssm, self.D, z)
        return self.out_proj(y), MambaState(window[..., 1:], h)

    def _select_state(self, keep: Tensor, new: MambaState, old: MambaState) -> MambaState:
        return MambaState(*(super(Mamba, self)._select_state(keep, a, b) for a, b in zip(new, old)))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"conv_size={self.conv_size}, dt_rank={self.dt_rank}, num_groups={self.num_groups}")
