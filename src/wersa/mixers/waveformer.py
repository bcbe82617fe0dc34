"""Waveformer (WavSpA): attention in Haar wavelet space, linear time, bidirectional.

Reference: Zhuang, Wang, Tao, Shang, "Waveformer: Linear-Time Attention with
Forward and Backward Wavelet Transform" (later "WavSpA"), arXiv 2210.01989.
The paradigm: forward wavelet transform of the sequence, attention computed in
wavelet-coefficient space, backward transform to token space. WERSA's paper uses
it as its strongest baseline; WERSA instead filters q and k in wavelet space and
attends in token space.

Math (per head, head width ``d``; ``W`` the orthonormal ``L``-level Haar analysis
matrix of size ``N_p x N_p``, ``N_p`` = ``N`` rounded up to a multiple of ``2^L``)::

    Q, K, V = x W_q, x W_k, x W_v                    (B, H, N, d), zero-padded to N_p rows
    Q^ = W Q,  K^ = W K,  V^ = W V                  coefficients [cA_L, cD_L, ..., cD_1], N_p rows
    Y^ = FAVOR+(Q^ d^{-1/4}, K^ d^{-1/4}, V^)       bidirectional random-feature attention over
                                                    the N_p coefficients (m features, O(N_p m d))
    Y  = (W^T Y^)[:N]                               inverse transform, crop
    out = Y W_o

Defaults: ``levels=3`` (``0 <= L <= 16``), ``num_features=256`` positive orthogonal random features
(the softmax kernel of :mod:`wersa.mixers.performer`, same stabilisers),
projection drawn from a generator seeded by ``feature_seed``.

Which coefficients exist. Haar is block-local: coefficient ``i`` of a level-``l``
band depends only on tokens ``i 2^l .. (i+1) 2^l - 1``. A coefficient whose block
lies entirely beyond the sequence's real length is an artefact of zero padding
(its value is 0, but its random feature ``phi(0)`` is not), so it is excluded
from the keys and its output coefficient is set to 0. The same rule applies to
the padding up to ``N_p`` of an unpadded sequence, which is what makes padding
exact:

* right padding (``attention_mask`` a prefix of ``True``): padded rows of q, k, v
  are zeroed before the transform. Every coefficient of a block that touches a
  real token then equals the unpadded sequence's coefficient (a partial block
  mixes real tokens with zeros in both cases), and every other block is
  excluded. Real outputs equal those of the unpadded sequence, up to rounding.
* left padding, or holes in the mask, shift the block alignment of the real
  tokens and change every coefficient: refused with a ``ValueError``
  (``left_padding=False``).

No causal form: a wavelet coefficient mixes tokens of a whole block, so the
output at position ``t`` depends on later tokens of the same (up to ``2^L``-token)
block and, through the global attention, on every token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.haar import haar_dwt, haar_idwt, padded_length
from ..ops.linear_attention import linear_attention
from .base import Capabilities, Mixer
from .performer import KERNELS, RandomFeatureMixin, _check_common, compute_dtype, favor_features
from .registry import register_mixer


def coefficient_mask(lengths: Tensor, n_pad: int, levels: int) -> Tensor:
    """Which wavelet coefficients touch a real token.

    Args:
        lengths: ``(B,)`` real lengths.
        n_pad: padded length ``N_p`` (a multiple of ``2^levels``).
    Returns:
        ``(B, N_p)`` bool in :func:`haar_dwt`'s concatenated order ``[cA_L, cD_L, ..., cD_1]``.
    """
    parts = []
    for level in [levels] + list(range(levels, 0, -1)):
        size = 1 << level
        starts = torch.arange(n_pad // size, device=lengths.device) * size
        parts.append(starts[None, :] < lengths[:, None])
    return torch.cat(parts, dim=1)


@register_mixer
class Waveformer(RandomFeatureMixin, Mixer):
    """Random-feature attention over Haar coefficients: ``(B, N, D) -> (B, N, D)``.

    Args:
        dim: model width ``D``; num_heads: ``H``.
        causal: must be ``False`` (no causal form).
        levels: Haar levels ``L`` (``0`` = plain Performer in token space).
        num_features: random features ``m``.
        kernel: ``"softmax"`` (FAVOR+) or ``"relu"``.
        feature_seed: seed of the projection's generator.
        redraw_interval: redraw the projection every this many training forward calls.
        eps: added to the attention denominator.
        qkv_bias, out_bias: biases of the input / output projections.
    """

    capabilities = Capabilities(
        name="waveformer", causal=False, bidirectional=True, attention_mask=True,
        recurrent=False, left_padding=False, linear_time=True,
        summary="random-feature attention in Haar wavelet space, inverse transform back (right padding only)",
        reference="Zhuang et al., Waveformer / WavSpA, arXiv 2210.01989",
    )

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        levels: int = 3, num_features: int = 256, kernel: str = "softmax", feature_seed: int = 0,
        redraw_interval: int | None = None, eps: float = 1e-8,
        qkv_bias: bool = False, out_bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal)
        name = self.capabilities.name
        _check_common(name, num_features, feature_seed, redraw_interval, eps)
        # Sequences are zero-padded to a multiple of 2^levels, so a huge L only wastes work.
        if not isinstance(levels, int) or isinstance(levels, bool) or not 0 <= levels <= 16:
            raise ValueError(f"{name}: levels must be an integer in [0, 16], got {levels!r}")
        if kernel not in KERNELS:
            raise ValueError(f"{name}: kernel must be one of {KERNELS}, got {kernel!r}")
        self.levels = levels
        self.num_features = num_features
        self.kernel = kernel
        self.feature_seed = feature_seed
        self.redraw_interval = redraw_interval
        self.eps = float(eps)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim, bias=out_bias)
        self._init_features()

    def _lengths(self, mask: Tensor | None, batch: int, n: int, device) -> Tensor:
        """Real lengths ``(B,)``; refuses masks that are not right padding."""
        if mask is None:
            return torch.full((batch,), n, dtype=torch.long, device=device)
        lengths = mask.sum(-1)
        prefix = torch.arange(n, device=device)[None, :] < lengths[:, None]
        if not bool((prefix == mask).all()):
            raise ValueError(
                f"{self.capabilities.name} supports right padding only (real tokens first, then padding): "
                f"left padding or holes shift the wavelet blocks and change every coefficient"
            )
        return lengths

    def attend_coefficients(self, q: Tensor, k: Tensor, v: Tensor, lengths: Tensor) -> Tensor:
        """DWT -> random-feature attention over coefficients -> inverse DWT.

        Args:
            q, k, v: ``(B, H, N, d)`` in the compute dtype, padded rows already zero.
            lengths: ``(B,)`` real lengths.
        Returns:
            ``(B, H, N, d)``.
        """
        n = q.shape[-2]
        n_pad = padded_length(n, self.levels)
        qc, kc, vc = (torch.cat(haar_dwt(t, self.levels), dim=-2) for t in (q, k, v))
        valid = coefficient_mask(lengths, n_pad, self.levels)  # (B, N_p)
        scale = self.head_dim ** -0.25
        omega = self.projection_matrix.to(q.dtype)
        phi_q = favor_features(qc * scale, omega, kernel=self.kernel, is_query=True)
        phi_k = favor_features(kc * scale, omega, kernel=self.kernel, is_query=False,
                               key_mask=valid, shift_keys=True)
        yc = linear_attention(phi_q, phi_k, vc, eps=self.eps)
        yc = yc * valid[:, None, :, None].to(yc.dtype)  # coefficients of padding-only blocks stay 0
        sizes = [n_pad >> self.levels] + [n_pad >> level for level in range(self.levels, 0, -1)]
        return haar_idwt(list(torch.split(yc, sizes, dim=-2)), length=n)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        self._maybe_redraw()
        b, n, _ = x.shape
        lengths = self._lengths(mask, b, n, x.device)
        cd = compute_dtype(x.dtype)
        qkv = self.to_qkv(x).to(cd)
        if mask is not None:
            qkv = qkv * mask.unsqueeze(-1).to(cd)  # zero padded rows before the transform
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend_coefficients(q, k, v, lengths)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.dim).to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, levels={self.levels}, num_features={self.num_features}, "
                f"kernel={self.kernel!r}, feature_seed={self.feature_seed}")
