"""Neighbourhood attention (NA): softmax attention over a sliding window of keys.

Reference: Hassani, Hwu, Shi, "Faster Neighborhood Attention: Reducing the O(n^2)
Cost of Self Attention at the Threadblock Level", NeurIPS 2024, arXiv 2403.04690
(and Hassani et al., "Neighborhood Attention Transformer", CVPR 2023). Window
semantics follow NATTEN (``SHI-Labs/NATTEN``, ``backends/flex.py::get_na_flex_mask``).

Window size ``k`` (option ``window_size``) = the number of keys a query attends to,
itself included (the library's one definition of "window"; NATTEN calls it ``kernel_size``). Per head, ``d = D / H``::

    y_i = softmax_j(q_i . k_j / sqrt(d)) v_j   over the window W(i),  then W_out

1-D window, dilation ``r`` (default 1), length ``n``. Tokens split into ``r``
interleaved groups ``g = i mod r``; inside a group, coordinates are ``p = i // r``
and the group length is ``G = ceil((n - g) / r)`` (unequal groups when
``n % r != 0``). With ``k' = min(k, G)``::

    non-causal: left = k // 2  (even k: one more key on the left than on the right)
                start = clamp(p - left, 0, G - k')
                W(i) = { g + r * c : start <= c < start + k' }
                -- border windows are SHIFTED, never truncated: every query sees k' keys
    causal:     W(i) = { i - r * m : 0 <= m < k, i - r * m >= 0 }
                -- the k most recent keys of the group, itself included (fewer at the start)

Sizes where ``k * r > n``: ``k`` is clamped per group to ``G`` (the query attends
to its whole group; NATTEN raises instead). So ``k >= n`` gives full attention and
causal ``k >= n`` full causal attention. This rule is also what makes short padded
rows well defined.

Padding (``attention_mask``): the real tokens of each row are compacted to the
front (:mod:`wersa.ops.compaction`) and the windows are computed over the real
length ``n_b`` of that row. A padded row therefore sees exactly the windows of
its unpadded sequence, for right, left or inner padding: "shifted window" means
shifted at the borders of the *real* tokens, never into padding.

2-D (``image_size=(Hh, Ww)``, input ``(B, Hh*Ww, D)`` in row-major order): the 1-D
rule per axis, AND-combined, ``k_h x k_w`` keys per query (``window_size`` and
``dilation`` may be ints or ``(h, w)`` pairs). The 2-D form is bidirectional and
takes no padding mask (a ``ValueError`` says so).

Decoding (``causal=True``, 1-D): a rolling buffer of the ``(k - 1) * r + 1`` most
recent keys/values, ``{"k", "v": (B, H, span, d), "count": (B,)}``: constant size.

Implementation: the key/value windows are gathered into ``(B, N, k, H, d)``
(never an ``N x N`` matrix): ``O(N k D)`` time and memory. Pure PyTorch, so it
trains on CPU (NATTEN's CPU path, Flex attention, has no backward). Softmax in
float32 for half-precision inputs.

Options: ``window_size=None`` (31 in 1-D, for long sequences; 7 per axis in 2-D,
NATTEN's usual image size), ``dilation=1``, ``image_size=None``, ``qkv_bias=True`` and
``out_bias=True`` (projections, as NATTEN's modules).

Naive reference: :func:`neighborhood_reference`, dense ``N x N`` masked softmax with the
window written out with plain Python integers (:func:`window_mask_reference`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..ops.compaction import compaction, gather_tokens
from ..ops.heads import compute_dtype
from .base import Capabilities, Mixer
from .registry import register_mixer

DEFAULT_WINDOW_1D = 31
DEFAULT_WINDOW_2D = 7


def neighborhood_window(
    pos: Tensor, length: Tensor, window_size: int, dilation: int = 1, causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Key positions of each query's window (see the module docstring).

    Args:
        pos: integer tensor of query positions (any shape).
        length: integer tensor broadcastable to ``pos``: sequence length seen by each query
            (``pos < length`` for a meaningful window).
    Returns:
        ``idx`` ``pos.shape + (k,)`` key positions (invalid slots point at the query),
        ``valid`` bool of the same shape.
    """
    k, r = window_size, dilation
    pos, length = torch.broadcast_tensors(pos, length)
    g = pos % r
    p = pos // r
    m = torch.arange(k, device=pos.device)
    if causal:
        c = p.unsqueeze(-1) - m
        valid = c >= 0
    else:
        G = ((length - g + r - 1) // r).clamp(min=1)
        k_eff = G.clamp(max=k)
        start = torch.minimum((p - k // 2).clamp(min=0), G - k_eff)
        c = start.unsqueeze(-1) + m
        valid = m < k_eff.unsqueeze(-1)
    idx = g.unsqueeze(-1) + r * c.clamp(min=0)
    idx = torch.where(valid, idx, pos.unsqueeze(-1))
    return idx, valid


def windowed_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    """Softmax attention of each query over its own key list.

    Args:
        q, k, v: ``(B, N, H, d)``.
        idx, valid: ``(B or 1, N, w)`` key positions and which slots are real.
    Returns:
        ``(B, N, H, d)``.
    """
    B, N, H, d = q.shape
    w = idx.shape[-1]
    idx = idx.expand(B, N, w)
    valid = valid.expand(B, N, w)
    flat = (idx + torch.arange(B, device=q.device).view(B, 1, 1) * N).reshape(-1)
    kw = k.reshape(B * N, H, d).index_select(0, flat).view(B, N, w, H, d)
    vw = v.reshape(B * N, H, d).index_select(0, flat).view(B, N, w, H, d)
    scores = torch.einsum("bnhd,bnwhd->bnhw", q * (d ** -0.5), kw)
    scores = scores.to(compute_dtype(scores.dtype))
    weights = scores.masked_fill(~valid.unsqueeze(2), float("-inf")).softmax(-1).to(v.dtype)
    return torch.einsum("bnhw,bnwhd->bnhd", weights, vw)


def neighborhood_mask_2d(
    image_size: tuple[int, int], window_size: tuple[int, int], dilation: tuple[int, int],
    device=None,
) -> tuple[Tensor, Tensor]:
    """``(idx, valid)`` of shape ``(H*W, k_h*k_w)`` for 2-D NA (row-major tokens)."""
    (Hh, Ww), (kh, kw), (rh, rw) = image_size, window_size, dilation
    ir, vr = neighborhood_window(torch.arange(Hh, device=device), torch.tensor(Hh, device=device), kh, rh)
    ic, vc = neighborhood_window(torch.arange(Ww, device=device), torch.tensor(Ww, device=device), kw, rw)
    idx = ir[:, None, :, None] * Ww + ic[None, :, None, :]  # (Hh, Ww, kh, kw)
    valid = vr[:, None, :, None] & vc[None, :, None, :]
    return idx.reshape(Hh * Ww, kh * kw), valid.reshape(Hh * Ww, kh * kw)


def _pair(value: Any, name: str) -> tuple[int, int]:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(vals) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in vals):
        raise ValueError(f"neighborhood: {name} must be a positive int or a pair of them, got {value!r}")
    return vals  # type: ignore[return-value]


@register_mixer
class NeighborhoodAttention(Mixer):
    """Neighbourhood attention, 1-D (sequences) or 2-D (``image_size``), NATTEN semantics.

    Args:
        dim: model width ``D``.
        num_heads: heads ``H``.
        causal: the ``window_size`` most recent keys of the dilation group, self included.
        window_size: keys per query (per axis in 2-D); ``None``: 31 (1-D) or 7 (2-D).
        dilation: gap between window keys (per axis in 2-D).
        image_size: ``(H, W)`` for a 2-D input ``(B, H*W, D)``; ``None`` = 1-D.
        qkv_bias: bias of the fused q/k/v projection.
        out_bias: bias of ``out_proj``.
    """

    example_options = ({"window_size": 3}, {"window_size": 5, "dilation": 2})
    capabilities = Capabilities(
        name="neighborhood", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=True, constant_state=True, linear_time=True,
        summary="neighbourhood attention: softmax over a shifted sliding window of k keys (1-D/2-D)",
        reference="Hassani et al., Faster Neighborhood Attention, NeurIPS 2024, arXiv 2403.04690",
    )

    renamed_options = {"kernel_size": "window_size", "bias": ("qkv_bias", "out_bias")}

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        window_size: int | tuple[int, int] | None = None, dilation: int | tuple[int, int] = 1,
        image_size: tuple[int, int] | None = None, qkv_bias: bool = True, out_bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal)
        if image_size is None:
            k = DEFAULT_WINDOW_1D if window_size is None else window_size
            for name, val in (("window_size", k), ("dilation", dilation)):
                if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                    raise ValueError(f"neighborhood: {name} must be a positive integer in 1-D, got {val!r}")
            self.window_size: Any = k
            self.dilation: Any = dilation
            self.image_size = None
        else:
            if causal:
                raise ValueError("neighborhood: the 2-D form (image_size) is bidirectional only; "
                                 "use causal=False or a 1-D sequence")
            self.image_size = _pair(image_size, "image_size")
            self.window_size = _pair(DEFAULT_WINDOW_2D if window_size is None else window_size, "window_size")
            self.dilation = _pair(dilation, "dilation")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)

    @property
    def span(self) -> int:
        """Tokens a causal 1-D query reaches back over, itself included: ``(k-1) r + 1``."""
        return (self.window_size - 1) * self.dilation + 1

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D) -> 3 x (B, N, H, d)``."""
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, N, D = x.shape
        if self.image_size is not None:
            Hh, Ww = self.image_size
            if N != Hh * Ww:
                raise ValueError(f"neighborhood: image_size={self.image_size} needs N = {Hh * Ww} tokens, got {N}")
            if mask is not None:
                raise ValueError("neighborhood: the 2-D form (image_size) takes no padding mask; "
                                 "images have no padded pixels")
            idx, valid = neighborhood_mask_2d(self.image_size, self.window_size, self.dilation, x.device)
            q, k, v = self._qkv(x)
            o = windowed_attention(q, k, v, idx.unsqueeze(0), valid.unsqueeze(0))
            return self.out_proj(o.reshape(B, N, D))
        comp = None
        pos = torch.arange(N, device=x.device).unsqueeze(0)  # (1, N)
        if mask is None:
            length = torch.full((1, 1), N, device=x.device)
        else:
            comp = compaction(mask)
            x = gather_tokens(x, comp.perm)
            L = comp.lengths.unsqueeze(1)  # (B, 1)
            # Padded slots (after compaction, at the end) get windows over the whole row so
            # that no softmax row is empty; their outputs are discarded.
            length = torch.where(pos < L, L, torch.full_like(L, N))
        idx, valid = neighborhood_window(pos, length, self.window_size, self.dilation, self.causal)
        q, k, v = self._qkv(x)
        o = windowed_attention(q, k, v, idx, valid)
        y = self.out_proj(o.reshape(B, N, D))
        return y if comp is None else gather_tokens(y, comp.inverse)

    # ------------------------------------------------------------ recurrent
    def _init_state(self, batch_size: int, device, dtype) -> dict[str, Tensor]:
        shape = (batch_size, self.num_heads, self.span, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype),
                "count": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def _step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = (t[:, 0] for t in self._qkv(x_t.unsqueeze(1)))  # (B, H, d)
        # The buffer holds the `span` most recent tokens, newest last.
        kb = torch.cat([state["k"][:, :, 1:], k.unsqueeze(2)], dim=2)
        vb = torch.cat([state["v"][:, :, 1:], v.unsqueeze(2)], dim=2)
        span, r = self.span, self.dilation
        back = span - 1 - torch.arange(span, device=x_t.device)  # how far back each slot is
        # Keys i - r*m, m < k, that exist (i - r*m >= 0, i = count).
        valid = (back % r == 0) & (back[None, :] <= state["count"][:, None])  # (B, span)
        scores = torch.einsum("bhd,bhsd->bhs", q * (self.head_dim ** -0.5), kb)
        scores = scores.to(compute_dtype(scores.dtype))
        weights = scores.masked_fill(~valid.unsqueeze(1), float("-inf")).softmax(-1).to(vb.dtype)
        o = torch.einsum("bhs,bhsd->bhd", weights, vb)
        y = self.out_proj(o.reshape(o.shape[0], self.dim))
        return y, {"k": kb, "v": vb, "count": state["count"] + 1}

    def extra_repr(self) -> str:
        extra = f", image_size={self.image_size}" if self.image_size is not None else ""
        return (f"{super().extra_repr()}, window_size={self.window_size}, "
                f"dilation={self.dilation}{extra}")


# ----------------------------------------------------------------- naive reference
def window_mask_reference(n: int, window_size: int, dilation: int = 1, causal: bool = False) -> Tensor:
    """Dense ``(n, n)`` bool: may query ``i`` see key ``j``? The window rule of the module
    docstring written out with plain Python integers."""
    k, r = window_size, dilation
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        g, p = i % r, i // r
        group_len = len(range(g, n, r))
        for j in range(g, n, r):
            c = j // r
            if causal:
                allowed[i, j] = 0 <= p - c < k
            else:
                k_eff = min(k, group_len)
                start = min(max(p - k // 2, 0), group_len - k_eff)
                allowed[i, j] = start <= c < start + k_eff
    return allowed


def neighborhood_reference(mixer: NeighborhoodAttention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Neighbourhood attention as dense masked softmax, one sequence at a time on its real
    tokens (``O(N^2)``). ``x``: ``(B, N, D)``; ``mask``: ``(B, N)`` or None (1-D only)."""
    batch, n, dim = x.shape
    h, d = mixer.num_heads, mixer.head_dim
    out = torch.zeros_like(x)
    for b in range(batch):
        real = torch.arange(n) if mask is None else mask[b].nonzero().flatten()
        xs = x[b, real]
        m = len(real)
        if mixer.image_size is None:
            allowed = window_mask_reference(m, mixer.window_size, mixer.dilation, mixer.causal)
        else:
            (hh, ww), (kh, kw), (rh, rw) = mixer.image_size, mixer.window_size, mixer.dilation
            rows, cols = window_mask_reference(hh, kh, rh), window_mask_reference(ww, kw, rw)
            allowed = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(hh * ww, hh * ww)
        q, k, v = mixer.qkv(xs).view(m, 3, h, d).permute(1, 2, 0, 3)  # 3 x (H, m, d)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        o = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # (H, m, d)
        out[b, real] = mixer.out_proj(o.transpose(0, 1).reshape(m, dim))
    return out
