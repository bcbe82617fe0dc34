"""Waveformer (WavSpA): attention in wavelet space, one attention module per band, bidirectional.

Reference: Zhuang, Wang, Tao, Shang, "WavSpA: Wavelet Space Attention for Boosting
Transformers' Long Sequence Learning Ability" (first titled "Waveformer"), arXiv
2210.01989; official code ``EvanZhuang/wavspa`` (``lra_benchmarks/models/wavspa/
wavspa_learn.py``, ``WavspaBlock``). WERSA's paper compares against it: WERSA filters
q and k in wavelet space and attends in token space; WavSpA attends in wavelet space.

``form="bands"`` (default, the paper's block). Per channel, an ``L``-level orthogonal
Daubechies DWT of the tokens (:mod:`wersa.ops.wavelets`, zero extension) gives
``L + 1`` bands ``[cA_L, cD_L, ..., cD_1]``; **each band is a sequence of width D fed
to its own attention module** (own q/k/v/out projections, own random features), and
the inverse transform maps the bands back to tokens::

    c_0, ..., c_L = DWT_h(x)                 c_b: (B, n_b, D), n_b ~ N / 2^level
    c'_b = Attention_b(c_b)                  attention="performer": FAVOR+ (random features)
                                             attention="softmax": exact softmax attention
    y = IDWT_h(c'_0, ..., c'_L)[:N]          (B, N, D); IDWT = DWT^T, its exact inverse

Defaults: ``wavelet="db2"``, ``levels=2`` (the official block's default; its LRA
configs use 1 or 2), ``attention="performer"`` with ``num_features=256``, band ``b``'s
features seeded with ``feature_seed + b``. ``learnable_wavelet=True`` makes the filter
a parameter per channel ``(D, 2K)`` initialised from ``dbK``, as the official code
does (then the inverse is the adjoint of the learnt analysis, exact only while the
filter stays orthonormal). The residual, LayerNorm and MLP of the official block are
the model's, not the mixer's.

Deviations from the official code: its ``"db2"`` configurations initialise the filter
from ``db{wlen/2}`` (``wlen = 32`` by default, 40 in the ListOps config), so the
name and the filter length disagree; here ``wavelet="dbK"`` is the filter ``dbK``.
Its transform extends the signal by reflection; here by zeros (PyWavelets
``mode="zero"``), which is what makes the transform exactly invertible by its
adjoint and padding exact (below).

Padding (per instance, :meth:`Waveformer.capabilities_for`): real tokens are
compacted to the front of each row (:mod:`wersa.ops.compaction`) and zero beyond
the real length, so a band's first ``n_b(len)`` coefficients are exactly the
unpadded sequence's and the rest touch no real token; each band attention gets
that prefix as its mask (:func:`~wersa.ops.wavelets.dwt_lengths`). Right, left and
inner padding leave real outputs unchanged.

``form="joint_haar"`` (this library's 0.1.0 ``waveformer``): an orthonormal Haar DWT
(``levels=3``), one random-feature attention over all bands jointly (one set of
projections), inverse transform, then the output bias in token space. Sequences are
zero-padded to a multiple of ``2^L``; a coefficient whose Haar block holds only
padding is excluded from the keys and its output is 0. Block alignment follows the
first token, so only right padding is exact (left padding or holes are refused).

No causal form: a coefficient mixes a block of tokens and attention is global.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops.compaction import compaction, gather_tokens
from ..ops.haar import band_sizes, haar_dwt, haar_idwt, padded_length
from ..ops.heads import compute_dtype
from ..ops.wavelets import dwt_lengths, wavelet_dwt, wavelet_filter, wavelet_idwt
from .base import Capabilities, Mixer
from .registry import build_mixer, mixer_options, register_mixer

FORMS = ("bands", "joint_haar")
ATTENTIONS = ("performer", "softmax")


def coefficient_mask(lengths: Tensor, n_pad: int, levels: int) -> Tensor:
    """Which Haar coefficients touch a real token (the ``joint_haar`` form).

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


def _inner_mixer(attention: str, dim: int, num_heads: int, *, qkv_bias: bool | None,
                 out_bias: bool | None, **features: Any) -> Mixer:
    """A bidirectional attention module over one sequence of coefficients, built through the
    registry under the option names that mixer accepts (``None``: that mixer's default)."""
    name = "performer" if attention == "performer" else "sdpa"
    accepted = mixer_options(name)
    biases = {k: v for k, v in (("qkv_bias", qkv_bias), ("out_bias", out_bias)) if v is not None}
    opts = {}
    if "qkv_bias" in accepted or not biases:
        opts.update(biases)
    elif len(set(biases.values())) > 1:
        raise ValueError(f"waveformer: attention={attention!r} has a single bias option; "
                         f"pass qkv_bias == out_bias")
    else:
        opts["bias"] = next(iter(biases.values()))
    for key, val in features.items():
        if key == "feature_map" and key not in accepted:
            key = "kernel"  # performer's earlier name of the same choice
        opts[key] = val
    return build_mixer(name, dim, num_heads, causal=False, **opts)


@register_mixer
class Waveformer(Mixer):
    """WavSpA attention in wavelet space: ``(B, N, D) -> (B, N, D)``.

    Args:
        dim: model width ``D``; num_heads: ``H`` (of each band's attention).
        causal: must be ``False`` (no causal form).
        form: ``"bands"`` (the paper: one attention per band) or ``"joint_haar"``
            (0.1.0: one attention over all Haar bands).
        wavelet: ``"db2"`` (default), ``"haar"`` or ``"dbK"``; ``joint_haar`` is Haar only.
        learnable_wavelet: the filter is a parameter per channel, initialised from ``wavelet``.
        levels: DWT levels ``L`` (default 2; ``joint_haar``: 3).
        attention: band attention, ``"performer"`` (random features) or ``"softmax"`` (exact).
        num_features, feature_map, feature_seed, redraw_interval, eps: the random
            features of ``attention="performer"`` (defaults 256, ``"softmax"``, 0, never,
            1e-8); an error with exact attention.
        qkv_bias, out_bias: biases of the input / output projections (default: those of the
            band attention, performer: ``False`` / ``True``; sdpa: none).
    """

    example_options = (
        {"levels": 1, "attention": "softmax"}, {"levels": 4, "feature_map": "relu", "num_features": 16},
        {"form": "joint_haar", "levels": 2, "num_features": 16},
    )
    capabilities = Capabilities(
        name="waveformer", causal=False, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=False, linear_time=True,
        summary="WavSpA: db2 wavelet transform, a separate random-feature (or exact) attention per band, "
                "inverse transform",
        reference="Zhuang et al., WavSpA (Waveformer), arXiv 2210.01989",
    )
    renamed_options = {"kernel": "feature_map"}
    # 0.1.0 checkpoints are the joint_haar form: its projections now live in a Performer submodule.
    renamed_parameters = {
        "to_qkv.": "attention.to_qkv.", "to_out.weight": "attention.to_out.weight",
        "to_out.bias": "token_bias", "projection_matrix": "attention.projection_matrix",
        "redraws": "attention.redraws", "calls_since_redraw": "attention.calls_since_redraw",
    }

    @classmethod
    def capabilities_for(cls, causal: bool = False, **options: Any) -> Capabilities:
        if options.get("form", "bands") == "joint_haar":
            return Capabilities(
                name="waveformer", causal=False, bidirectional=True, attention_mask=True,
                recurrent=False, left_padding=False, linear_time=True,
                summary="random-feature attention over all Haar bands jointly, inverse transform "
                        "(right padding only)",
                reference=cls.capabilities.reference,
            )
        return cls.capabilities

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        form: str = "bands", wavelet: str | None = None, learnable_wavelet: bool = False,
        levels: int | None = None, attention: str = "performer",
        num_features: int | None = None, feature_map: str | None = None, feature_seed: int | None = None,
        redraw_interval: int | None = None, eps: float | None = None,
        qkv_bias: bool | None = None, out_bias: bool | None = None,
    ):
        super().__init__(dim, num_heads, causal)
        name = "waveformer"
        if form not in FORMS:
            raise ValueError(f"{name}: form must be one of {FORMS}, got {form!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"{name}: attention must be one of {ATTENTIONS}, got {attention!r}")
        self.capabilities = type(self).capabilities_for(causal=causal, form=form)
        if levels is None:
            levels = 3 if form == "joint_haar" else 2
        # Each level roughly halves a band, so a huge L only adds tiny bands (and work).
        if not isinstance(levels, int) or isinstance(levels, bool) or not 0 <= levels <= 16:
            raise ValueError(f"{name}: levels must be an integer in [0, 16], got {levels!r}")
        rf = dict(num_features=num_features, feature_map=feature_map, feature_seed=feature_seed,
                  redraw_interval=redraw_interval, eps=eps)
        if attention == "softmax":
            given = [k for k, v in rf.items() if v is not None]
            if given:
                raise ValueError(f"{name}: {', '.join(given)} configure random features; "
                                 f"attention='softmax' is exact and has none")
            rf = {}
        else:
            rf = {k: v for k, v in rf.items() if v is not None}
        seed = rf.pop("feature_seed", 0)
        self.form, self.levels, self.attention_kind = form, levels, attention

        if form == "joint_haar":
            if wavelet not in (None, "haar", "db1") or learnable_wavelet or attention != "performer":
                raise ValueError(f"{name}: form='joint_haar' is a fixed Haar wavelet with random-feature "
                                 f"attention; wavelet/learnable_wavelet/attention select the 'bands' form")
            self.wavelet = "haar"
            # The output projection (linear) commutes with the inverse transform; its bias is
            # added in token space, as in 0.1.0.
            self.attention = _inner_mixer("performer", dim, num_heads, qkv_bias=qkv_bias, out_bias=False,
                                          feature_seed=seed, **rf)
            self.token_bias = None
            if out_bias is None or out_bias:
                bound = dim ** -0.5  # nn.Linear's bias init
                self.token_bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
            return

        self.wavelet = "db2" if wavelet is None else wavelet
        h = wavelet_filter(self.wavelet)  # float64; raises on an unknown name
        self.filter_length = h.shape[0]
        if learnable_wavelet:
            self.wavelet_filter = nn.Parameter(h.to(torch.get_default_dtype()).expand(dim, -1).clone())
        else:
            self.wavelet_filter = None
            # Plain floats, not a buffer: .to(bfloat16) would round them, and a model built on the
            # meta device (from_pretrained) would hold no data (nothing to load: they are constants).
            self._fixed_taps = tuple(h.tolist())
        self.bands = nn.ModuleList(
            _inner_mixer(attention, dim, num_heads, qkv_bias=qkv_bias, out_bias=out_bias,
                         **({} if attention == "softmax" else dict(rf, feature_seed=seed + band)))
            for band in range(levels + 1)
        )

    # ------------------------------------------------------------------ bands
    def _filter(self, device, dtype) -> Tensor:
        if self.wavelet_filter is not None:
            return self.wavelet_filter.to(dtype)
        return torch.tensor(self._fixed_taps, device=device, dtype=dtype)

    def _bands_forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        comp = None
        if mask is not None:
            comp = compaction(mask)
            x = gather_tokens(x, comp.perm)
            real = torch.arange(n, device=x.device)[None, :] < comp.lengths[:, None]
            x = x * real.unsqueeze(-1).to(x.dtype)  # zeros beyond the real length: the zero extension
        # The transform runs in float32 for half inputs; each band attention in the input dtype.
        td = compute_dtype(x.dtype)
        h = self._filter(x.device, td)
        coeffs = wavelet_dwt(x.to(td), h, self.levels)
        band_lengths = None
        if comp is not None:
            band_lengths = dwt_lengths(comp.lengths, self.filter_length, self.levels)
        outs = []
        for i, (band, c) in enumerate(zip(self.bands, coeffs)):
            band_mask = None
            if band_lengths is not None:
                # coefficients touching a real token: a prefix (none for an all-padding row)
                live = torch.where(comp.lengths > 0, band_lengths[i], 0)
                band_mask = torch.arange(c.shape[1], device=x.device)[None, :] < live[:, None]
            outs.append(band(c.to(x.dtype), attention_mask=band_mask).to(td))
        y = wavelet_idwt(outs, h, n).to(x.dtype)
        return y if comp is None else gather_tokens(y, comp.inverse)

    # ------------------------------------------------------------- joint Haar
    def _lengths(self, mask: Tensor | None, batch: int, n: int, device) -> Tensor:
        """Real lengths ``(B,)``; refuses masks that are not right padding."""
        if mask is None:
            return torch.full((batch,), n, dtype=torch.long, device=device)
        lengths = mask.sum(-1)
        prefix = torch.arange(n, device=device)[None, :] < lengths[:, None]
        if not bool((prefix == mask).all()):
            raise ValueError(
                "waveformer (form='joint_haar') supports right padding only (real tokens first, then "
                "padding): left padding or holes shift the Haar blocks and change every coefficient; "
                "the default form='bands' takes any padding"
            )
        return lengths

    def _joint_haar_forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        lengths = self._lengths(mask, b, n, x.device)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)  # zero padded rows before the transform
        n_pad = padded_length(n, self.levels)
        valid = coefficient_mask(lengths, n_pad, self.levels)  # (B, N_p)
        coeffs = torch.cat(haar_dwt(x, self.levels), dim=-2)
        # The projections are linear along channels, so they commute with the transform.
        yc = self.attention(coeffs, attention_mask=valid)  # 0 at padding-only coefficients
        y = haar_idwt(list(torch.split(yc, band_sizes(n, self.levels), dim=-2)), length=n)
        return y if self.token_bias is None else y + self.token_bias

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.form == "joint_haar":
            return self._joint_haar_forward(x, mask)
        return self._bands_forward(x, mask)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, form={self.form!r}, wavelet={self.wavelet!r}, levels={self.levels}, "
                f"attention={self.attention_kind!r}")
