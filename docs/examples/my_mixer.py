"""Linear transformer: softmax attention with ``exp(q . k)`` replaced by ``phi(q) . phi(k)``.

Reference: Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020, arXiv 2006.16236.

Per head, with queries, keys, values ``q, k, v`` of shape ``(B, H, N, d)`` and a positive
feature map ``phi`` (the paper's ``elu(x) + 1``)::

    y_i = sum_{j in S_i} (phi(q_i) . phi(k_j)) v_j  /  sum_{j in S_i} phi(q_i) . phi(k_j)

``S_i`` holds every real key (bidirectional) or the real keys ``j <= i`` (causal). Summing
the keys first, ``S = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)``, gives
``y_i = phi(q_i)^T S / phi(q_i)^T z`` in ``O(N d^2)`` time. In causal mode ``(S, z)`` is a
running sum: the mechanism is an RNN with a constant ``(d x d)`` state per head, which is
what :meth:`step` carries.

Padding: a padded key is left out of ``S`` and ``z`` (its features are zeroed), so the
real outputs of a padded sequence equal those of the unpadded one, padding on either side.

:func:`linear_transformer_reference` below is the formula above, one query and one key at
a time; ``test_my_mixer.py`` compares the fast path with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wersa
from wersa.ops.heads import compute_dtype, merge_heads, split_heads
from wersa.ops.linear_attention import (
    LinearAttentionState,
    causal_linear_attention,
    linear_attention,
    linear_attention_init_state,
    linear_attention_step,
)

FEATURE_MAPS = {
    "elu": lambda t: F.elu(t) + 1.0,  # the paper's: positive and smooth
    "relu": F.relu,                   # sparser; a query may see zero weight (its output is then 0)
}


@wersa.register_mixer
class LinearTransformer(wersa.Mixer):
    """Linear attention with its own q/k/v and output projections: ``(B, N, D) -> (B, N, D)``.

    Options: ``feature_map`` (``"elu"`` = ``elu(x) + 1``, or ``"relu"``), ``chunk_size`` (tokens per
    chunk of the causal form; speed only), ``eps`` (added to the denominator), ``qkv_bias`` and
    ``out_bias`` (biases of the input and output projections).
    """

    capabilities = wersa.Capabilities(
        name="linear_transformer",
        causal=True,
        bidirectional=True,
        attention_mask=True,
        left_padding=True,
        recurrent=True,
        constant_state=True,
        linear_time=True,
        summary="linear transformer: attention with elu(x)+1 features, O(N d^2); an RNN when causal",
        reference="Katharopoulos et al., Transformers are RNNs: Fast Autoregressive Transformers "
                  "with Linear Attention, arXiv 2006.16236",
    )
    # Option sets the capability matrix and the property tests build it with besides the
    # defaults: small chunks, so the chunked causal path runs at test lengths.
    example_options = ({"feature_map": "relu", "chunk_size": 4},)

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *,
                 feature_map: str = "elu", chunk_size: int = 64, eps: float = 1e-6,
                 qkv_bias: bool = True, out_bias: bool = True):
        super().__init__(dim, num_heads, causal)  # checks dim, num_heads and the mode
        name = self.capabilities.name
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"{name}: feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"{name}: chunk_size must be a positive integer, got {chunk_size!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0 (it keeps an all-zero row finite), got {eps!r}")
        self.feature_map, self.chunk_size, self.eps = feature_map, chunk_size, float(eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)

    # ------------------------------------------------------------------ helpers
    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D)`` -> ``phi(q), phi(k), v``, each ``(B, H, N, d)``, in the compute dtype.

        Half-precision inputs are summed in float32 (long running sums lose small terms).
        """
        q, k, v = self.qkv(x).to(compute_dtype(x.dtype)).chunk(3, dim=-1)
        phi = FEATURE_MAPS[self.feature_map]
        h = self.num_heads
        return phi(split_heads(q, h)), phi(split_heads(k, h)), split_heads(v, h)

    def _output(self, o: Tensor, dtype: torch.dtype) -> Tensor:
        """``(B, H, N, d)`` -> ``(B, N, D)`` through the output projection."""
        return self.out_proj(merge_heads(o).to(dtype))

    # ------------------------------------------------------------------ forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        # x is validated; mask is None or a (B, N) bool with a padded position. The base
        # class zeroes the outputs at padded positions afterwards.
        phi_q, phi_k, v = self._features(x)
        if self.causal:
            o = causal_linear_attention(phi_q, phi_k, v, key_mask=mask, eps=self.eps, chunk_size=self.chunk_size)
        else:
            o = linear_attention(phi_q, phi_k, v, key_mask=mask, eps=self.eps)
        return self._output(o, x.dtype)

    # ---------------------------------------------------------------- recurrent
    def _init_state(self, batch_size: int, device, dtype) -> LinearAttentionState:
        d = self.head_dim
        return linear_attention_init_state(batch_size, self.num_heads, d, d, device=device,
                                           dtype=compute_dtype(dtype))

    def _step(self, x_t: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        phi_q, phi_k, v = self._features(x_t.unsqueeze(1))  # (B, H, 1, d)
        o, state = linear_attention_step(phi_q[:, :, 0], phi_k[:, :, 0], v[:, :, 0], state, eps=self.eps)
        return self._output(o.unsqueeze(2), x_t.dtype)[:, 0], state

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, LinearAttentionState]:
        """A prompt ``(B, N, D)`` in parallel: ``(outputs (B, N, D), state)``.

        Without it, ``prefill`` would step token by token (correct, slow); the chunked causal
        form returns the same running sums. Padded positions stay out of the state.
        """
        phi_q, phi_k, v = self._features(x)
        o, state = causal_linear_attention(phi_q, phi_k, v, key_mask=mask, eps=self.eps,
                                           chunk_size=self.chunk_size, return_state=True)
        return self._output(o, x.dtype), state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_map={self.feature_map!r}, chunk_size={self.chunk_size}"


def linear_transformer_reference(mixer: LinearTransformer, x: Tensor,
                                 attention_mask: Tensor | None = None) -> Tensor:
    """The formula of the module docstring, one query and one key at a time: ``O(B H N^2)`` loops.

    ``x``: ``(B, N, D)``; ``attention_mask``: ``(B, N)``, ``True`` = real token. Returns
    ``(B, N, D)`` with zeros at padded positions. Independent of the fast path's head
    layout and of :mod:`wersa.ops.linear_attention`; use it in float64 on short inputs.
    """
    B, N, D = x.shape
    d = mixer.head_dim
    real = torch.ones(B, N, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    phi = FEATURE_MAPS[mixer.feature_map]
    q, k, v = mixer.qkv(x).split(D, dim=-1)
    rows = []
    for b in range(B):
        for i in range(N):
            out_i = []
            for h in range(mixer.num_heads):
                cols = slice(h * d, (h + 1) * d)
                num, den = torch.zeros_like(v[b, i, cols]), torch.zeros((), dtype=x.dtype)
                for j in range(N):
                    if real[b, i] and real[b, j] and (j <= i or not mixer.causal):
                        w = phi(q[b, i, cols]) @ phi(k[b, j, cols])
                        num, den = num + w * v[b, j, cols], den + w
                out_i.append(num / (den + mixer.eps))
            rows.append(torch.cat(out_i))
    y = mixer.out_proj(torch.stack(rows).view(B, N, D))
    return y.masked_fill(~real.unsqueeze(-1), 0.0)
