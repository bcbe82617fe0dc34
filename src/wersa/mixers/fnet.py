"""FNet: parameter-free Fourier token mixing.

Lee-Thorp et al., "FNet: Mixing Tokens with Fourier Transforms", NAACL 2022,
arXiv 2105.03824. The attention sublayer is replaced by the real part of the
two-dimensional discrete Fourier transform over the sequence and hidden axes::

    y = Re( FFT_seq( FFT_hidden(x) ) ) = Re(fft2(x, dim=(-2, -1)))        (B, N, D)

    y[n, c] = sum_{m, e} x[m, e] cos(2 pi (n m / N + c e / D))            (x real)

The paper places it in a post-LN BERT block (``x = LN(x + y)``); the block is the
model's business, this module is the mixing only. No parameters, no heads
(``num_heads`` is accepted for the common signature and unused), no causal form
(every output mixes every position, so ``causal=True`` is refused by the base
class). Cost: O(N D (log N + log D)) time, O(N D) memory.

Options:

* ``norm="backward"``: the ``torch.fft`` normalisation. ``"backward"`` (default)
  is the paper's unscaled transform, whose outputs grow like ``sqrt(N D)`` for
  unit inputs; ``"ortho"`` scales by ``1/sqrt(N D)`` and ``"forward"`` by
  ``1/(N D)``. With ``"backward"`` the scale depends on the sequence length, so
  a padded sequence must use its own length (below).

Padding (``attention_mask``). The reference implementation has no mask: padding
tokens enter every output and the DFT length is the padded length, so the same
sentence gives different outputs in batches of different widths. Here each
sequence is transformed over its *own* real tokens: the real tokens of every row
are gathered to the front in order (stable sort of the mask), rows are grouped
by real length ``L`` and each group gets one ``fft2`` over its first ``L``
positions, and the results are scattered back to the real positions. The
outputs at real positions therefore equal those of the unpadded sequence, for
right and left padding alike (the transform of a row of real tokens with holes
is that of the tokens read in order). The loop runs over the distinct lengths
in the batch (at most ``B`` transforms).

Precision. ``torch.fft`` has no bfloat16 (and on CPU no float16) kernels, so
half-precision inputs are transformed in float32 and cast back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Capabilities, Mixer
from .registry import register_mixer

_NORMS = ("backward", "ortho", "forward")


@register_mixer
class FNetMixer(Mixer):
    """Real part of the 2-D FFT over (sequence, hidden). ``(B, N, D) -> (B, N, D)``.

    Args:
        dim: model width ``D``.
        num_heads: accepted for the common signature; FNet has no heads.
        causal: must be False (FNet has no causal form).
        norm: ``torch.fft`` normalisation, ``"backward"`` (unscaled, the paper's),
            ``"ortho"`` or ``"forward"``.
    """

    example_options = ({"norm": "ortho"},)
    capabilities = Capabilities(
        name="fnet", causal=False, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=False, constant_state=False, linear_time=True,
        summary="FNet: Re(fft2) over sequence and hidden, no parameters, bidirectional only",
        reference="Lee-Thorp et al., FNet: Mixing Tokens with Fourier Transforms, arXiv 2105.03824",
    )

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *, norm: str = "backward"):
        super().__init__(dim, num_heads, causal)
        if norm not in _NORMS:
            raise ValueError(f"fnet: norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        self.norm = norm

    def _fourier(self, x: Tensor) -> Tensor:
        """``Re(fft2(x))`` over the last two axes, computed in >= float32. ``(..., N, D)``."""
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return torch.fft.fft2(work, dim=(-2, -1), norm=self.norm).real.to(x.dtype)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: ``(B, N, D)``; mask: ``(B, N)`` bool or None -> ``(B, N, D)``."""
        if mask is None:
            return self._fourier(x)
        batch, n, dim = x.shape
        # Real tokens first, in order: a stable sort puts True (key 0) before False (key 1).
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, N)
        gather_idx = order.unsqueeze(-1).expand(batch, n, dim)
        packed = x.gather(1, gather_idx)
        lengths = mask.sum(dim=1)
        out_packed = torch.zeros_like(x)
        for length in torch.unique(lengths).tolist():
            if length == 0:  # all-padding rows: output stays zero
                continue
            rows = (lengths == length).nonzero(as_tuple=True)[0]
            out_packed[rows, :length] = self._fourier(packed[rows, :length])
        # Back to the original positions; padded positions receive zeros.
        return torch.zeros_like(x).scatter(1, gather_idx, out_packed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm!r}"
