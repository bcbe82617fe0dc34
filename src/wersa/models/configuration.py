"""``WersaConfig``: the Hugging Face configuration of every ``wersa`` model.

One config describes the backbone (:class:`~wersa.models.WersaModel`), the
classifier and the causal LM. Every value is checked when the config is built,
so a bad config fails at construction with an error that names the field and
the fix, never deep inside a forward pass.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from ..mixers import capabilities
from ..mixers.transnormer import transnormer_layer_options

HIDDEN_ACTS = ("gelu", "swiglu")
NORM_TYPES = ("rmsnorm", "layernorm")
POSITION_TYPES = ("learned", "sinusoidal", "rotary", "none")
POOLINGS = ("mean", "cls", "last")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"WersaConfig: {name} must be a positive integer, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"WersaConfig: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _probability(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"WersaConfig: {name} must be a float in [0, 1), got {value!r}")


class WersaConfig(PretrainedConfig):
    """Configuration of the ``wersa`` models (``model_type = "wersa"``).

    Args:
        mixer: registry name of the token mixer used by every layer (see
            :func:`wersa.list_mixers`), unless ``layer_mixers`` overrides it.
        mixer_options: options passed to ``build_mixer`` for the layers that use ``mixer``.
            ``transnormer`` layers without an ``attention`` option follow the paper's
            layout: ``"diag"`` in the first ``num_hidden_layers // 2`` layers, ``"norm"`` above.
        layer_mixers: ``None`` (every layer uses ``mixer``) or one mixer name per layer,
            for hybrids such as a few ``softmax`` layers among ``wersa`` layers.
        layer_mixer_options: ``None`` or one dict (or ``None``) per layer; merged over
            ``mixer_options`` when the layer uses ``mixer``, used alone otherwise.
        causal: ``True`` builds causal mixers, ``False`` bidirectional ones, ``None``
            lets the model class decide (the LM is causal; the backbone and the
            classifier are bidirectional when every layer's mixer has that form).
        vocab_size: token vocabulary (``input_ids``); ``None`` when ``input_dim`` is used.
        input_dim: width of non-token inputs (``input_values`` of shape ``(B, N, input_dim)``,
            e.g. pixels), projected to ``hidden_size``; ``None`` for token inputs.
        hidden_size: model width ``D``.
        num_hidden_layers: depth.
        num_attention_heads: heads per mixer; must divide ``hidden_size``.
        intermediate_size: FFN width; ``None`` = ``4 D`` (gelu) or ``8 D / 3`` rounded up to a
            multiple of 8 (swiglu, keeping the parameter count of a ``4 D`` gelu FFN).
        hidden_act: FFN activation, ``"gelu"`` or ``"swiglu"``.
        norm_type: pre-norm type, ``"rmsnorm"`` or ``"layernorm"``.
        norm_eps: epsilon of the norms.
        position_embedding_type: ``"learned"``, ``"sinusoidal"``, ``"none"`` (rotary needs
            access to queries and keys inside the mixer, which the Mixer contract does not
            expose, so ``"rotary"`` is refused with a ``ValueError``).
        max_position_embeddings: longest position for ``"learned"`` positions (``None`` = no
            limit, allowed for the other schemes).
        hidden_dropout_prob: dropout on embeddings and on each residual branch.
        classifier_pooling: ``"mean"`` over real tokens, ``"cls"`` (a learned token prepended to
            the sequence) or ``"last"`` (last real token; suits causal mixers).
        classifier_dropout: dropout before the classification head.
        num_labels: classes of the sequence classifier.
        tie_word_embeddings: share the LM head with the token embedding.
        initializer_range: std of the normal init of embeddings and linear layers
            outside the mixers (mixers keep their own init).
        use_cache: return a decoding cache from causal forward passes by default.
        compile_step: decode through ``torch.compile`` of the recurrent mixers' token step
            (:meth:`wersa.mixers.Mixer.compile_step`): faster generation after a compilation
            of a few seconds per batch size (inductor on CPU needs a C++ compiler); outputs
            equal eager's up to rounding. Needs a causal model with at least one recurrent
            layer; the parallel passes (training, the prompt) stay eager.
    """

    model_type = "wersa"

    def __init__(
        self,
        mixer: str = "wersa",
        mixer_options: dict[str, Any] | None = None,
        layer_mixers: list[str] | None = None,
        layer_mixer_options: list[dict[str, Any] | None] | None = None,
        causal: bool | None = None,
        vocab_size: int | None = 256,
        input_dim: int | None = None,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        norm_type: str = "rmsnorm",
        norm_eps: float = 1e-6,
        position_embedding_type: str = "learned",
        max_position_embeddings: int | None = 2048,
        hidden_dropout_prob: float = 0.0,
        classifier_pooling: str = "mean",
        classifier_dropout: float = 0.0,
        tie_word_embeddings: bool = True,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        compile_step: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ):
        # --- mixers
        if not isinstance(mixer, str):
            raise TypeError(f"WersaConfig: mixer must be a registry name (str), got {type(mixer).__name__}")
        if mixer_options is None:
            mixer_options = {}
        if not isinstance(mixer_options, dict):
            raise TypeError(f"WersaConfig: mixer_options must be a dict, got {type(mixer_options).__name__}")
        _positive_int("num_hidden_layers", num_hidden_layers)
        if layer_mixers is not None:
            if not isinstance(layer_mixers, (list, tuple)) or not all(isinstance(m, str) for m in layer_mixers):
                raise TypeError("WersaConfig: layer_mixers must be None or a list of mixer names (str)")
            if len(layer_mixers) != num_hidden_layers:
                raise ValueError(
                    f"WersaConfig: layer_mixers has {len(layer_mixers)} entries but num_hidden_layers="
                    f"{num_hidden_layers}; give one mixer name per layer"
                )
            layer_mixers = list(layer_mixers)
        if layer_mixer_options is not None:
            if not isinstance(layer_mixer_options, (list, tuple)) or not all(
                o is None or isinstance(o, dict) for o in layer_mixer_options
            ):
                raise TypeError("WersaConfig: layer_mixer_options must be None or a list of dicts (or None)")
            if len(layer_mixer_options) != num_hidden_layers:
                raise ValueError(
                    f"WersaConfig: layer_mixer_options has {len(layer_mixer_options)} entries but "
                    f"num_hidden_layers={num_hidden_layers}; give one dict (or None) per layer"
                )
            layer_mixer_options = [dict(o) if o else {} for o in layer_mixer_options]
        if causal is not None and not isinstance(causal, bool):
            raise TypeError(f"WersaConfig: causal must be True, False or None, got {causal!r}")
        for i, name in enumerate(layer_mixers or [mixer]):
            opts = dict(mixer_options) if name == mixer else {}
            opts.update((layer_mixer_options[i] if layer_mixer_options else None) or {})
            # What an instance built with these options supports; unknown names and options
            # raise a ValueError with a did-you-mean.
            caps_c = capabilities(name, causal=True, **opts)
            caps = capabilities(name, causal=False, **opts)
            where = f"layer {i} mixer {name!r}" if layer_mixers else f"mixer {name!r}"
            if causal is True and not caps_c.causal:
                raise ValueError(f"WersaConfig: causal=True but {where} has no causal form; pick a causal mixer")
            if causal is False and not caps.bidirectional:
                raise ValueError(f"WersaConfig: causal=False but {where} is causal only; use causal=True or None")

        # --- sizes
        _positive_int("hidden_size", hidden_size)
        _positive_int("num_attention_heads", num_attention_heads)
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"WersaConfig: num_attention_heads={num_attention_heads} does not divide hidden_size={hidden_size}; "
                f"choose num_attention_heads among the divisors of {hidden_size}"
            )
        _positive_int("vocab_size", vocab_size, allow_none=True)
        _positive_int("input_dim", input_dim, allow_none=True)
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(
                "WersaConfig: set exactly one of vocab_size (token inputs, input_ids) and input_dim "
                f"(float inputs, input_values); got vocab_size={vocab_size!r}, input_dim={input_dim!r}"
            )
        _choice("hidden_act", hidden_act, HIDDEN_ACTS)
        if intermediate_size is None:
            intermediate_size = 4 * hidden_size if hidden_act == "gelu" else 8 * math.ceil(8 * hidden_size / 3 / 8)
        _positive_int("intermediate_size", intermediate_size)
        _choice("norm_type", norm_type, NORM_TYPES)
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or norm_eps <= 0:
            raise ValueError(f"WersaConfig: norm_eps must be a positive float, got {norm_eps!r}")

        # --- positions
        _choice("position_embedding_type", position_embedding_type, POSITION_TYPES)
        if position_embedding_type == "rotary":
            raise ValueError(
                "WersaConfig: position_embedding_type='rotary' needs access to the queries and keys inside "
                "the mixer, which the Mixer contract does not expose; use 'learned', 'sinusoidal' or 'none'"
            )
        _positive_int("max_position_embeddings", max_position_embeddings, allow_none=True)
        if position_embedding_type == "learned" and max_position_embeddings is None:
            raise ValueError(
                "WersaConfig: position_embedding_type='learned' needs max_position_embeddings (a positive int); "
                "use 'sinusoidal' or 'none' for unbounded lengths"
            )

        # --- heads, dropout, init
        _probability("hidden_dropout_prob", hidden_dropout_prob)
        _probability("classifier_dropout", classifier_dropout)
        _choice("classifier_pooling", classifier_pooling, POOLINGS)
        if not isinstance(initializer_range, (int, float)) or initializer_range <= 0:
            raise ValueError(f"WersaConfig: initializer_range must be a positive float, got {initializer_range!r}")
        if not isinstance(compile_step, bool):
            raise TypeError(f"WersaConfig: compile_step must be True or False, got {compile_step!r}")
        if tie_word_embeddings and vocab_size is None:
            # Nothing to tie without a token embedding; record it so the saved config is truthful.
            tie_word_embeddings = False
        if pad_token_id is not None and vocab_size is not None and not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"WersaConfig: pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size})")

        self.mixer = mixer
        self.mixer_options = dict(mixer_options)
        self.layer_mixers = layer_mixers
        self.layer_mixer_options = layer_mixer_options
        self.causal = causal
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.norm_eps = float(norm_eps)
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = float(classifier_dropout)
        self.initializer_range = float(initializer_range)
        self.use_cache = bool(use_cache)
        self.compile_step = compile_step
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        # Some transformers versions do not keep these as attributes unless set explicitly.
        self.tie_word_embeddings = bool(tie_word_embeddings)
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def layer_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(mixer name, options)]`` for each layer, after applying the per-layer overrides."""
        names = self.layer_mixers or [self.mixer] * self.num_hidden_layers
        per_layer = self.layer_mixer_options or [{} for _ in names]
        specs = []
        for i, (name, extra) in enumerate(zip(names, per_layer)):
            base = dict(self.mixer_options) if name == self.mixer else {}
            base.update(extra or {})
            if name == "transnormer" and "attention" not in base:
                # The paper's stack: DiagAttention in the lower half of the layers, Norm above.
                base["attention"] = transnormer_layer_options(self.num_hidden_layers)[i]["attention"]
            specs.append((name, base))
        return specs
