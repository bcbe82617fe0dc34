"""Hugging Face models built from any registered mixer.

* :class:`WersaModel`: embeddings (tokens or an input projection) + positions +
  pre-norm blocks ``x + mixer(norm(x))``, ``x + ffn(norm(x))`` + final norm.
* :class:`WersaForSequenceClassification`: pooled backbone + linear head.
* :class:`WersaForCausalLM`: causal backbone + LM head, with ``generate()``.

Shapes: ``B`` batch, ``N`` new positions in this call, ``P`` positions already in
the cache, ``D`` width, ``V`` vocabulary.

Masks follow transformers: ``attention_mask`` is ``(B, N)`` or, with a cache,
``(B, P + N)``; 1 = real token, 0 = padding. Position ids of real tokens are the
count of real tokens before them (``cumsum(mask) - 1``), so a padded sequence
sees the same positions as the unpadded one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutput,
)

from ..mixers import build_mixer, capabilities
from .cache import WersaCache
from .configuration import WersaConfig

try:  # transformers >= 5: init functions that never overwrite loaded weights
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

# The cache field of the output dataclasses was renamed past_key_values -> cache in transformers 5.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


# ---------------------------------------------------------------------- layers
class WersaRMSNorm(nn.Module):
    """RMSNorm: ``x / rms(x) * weight``, computed in float32 for stability. ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def _make_norm(config: WersaConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return WersaRMSNorm(config.hidden_size, config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


class WersaFFN(nn.Module):
    """Position-wise feed-forward: GELU MLP or SwiGLU. ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, config: WersaConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.act = config.hidden_act
        self.up = nn.Linear(d, 2 * f if self.act == "swiglu" else f)
        self.down = nn.Linear(f, d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.act == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(h)
        return self.down(h)


def sinusoidal_embedding(positions: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """Fixed sin/cos position encodings (Vaswani et al.). ``(B, N)`` int -> ``(B, N, dim)``."""
    half = (dim + 1) // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) * 2.0 / dim
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * freq
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., :dim]
    return emb.to(dtype)


class WersaBlock(nn.Module):
    """Pre-norm residual block: ``h + drop(mixer(norm1(h)))``, then ``h + drop(ffn(norm2(h)))``.

    Three ways to run it, all computing the same function of the sequence:
    ``forward`` (whole sequence), ``prefill`` (whole sequence, returns a decoding
    state) and ``extend`` (new tokens after a state).
    """

    def __init__(self, config: WersaConfig, mixer_name: str, mixer_options: dict[str, Any], causal: bool):
        super().__init__()
        self.mixer_name = mixer_name
        self.norm1 = _make_norm(config)
        self.mixer = build_mixer(
            mixer_name, config.hidden_size, config.num_attention_heads, causal=causal, **mixer_options
        )
        caps = self.mixer.capabilities  # what this instance supports (options can narrow a claim)
        # Mixers own their initialisation (orthogonal random features, gates, ...); keep it.
        for m in self.mixer.modules():
            m._wersa_keep_init = True
        self.norm2 = _make_norm(config)
        self.ffn = WersaFFN(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Causal mixers without token-by-token form decode by recomputing over their input history.
        self.cache_kind = "recurrent" if caps.recurrent else "history"

    def _finish(self, h: Tensor, mixed: Tensor) -> Tensor:
        h = h + self.dropout(mixed)
        return h + self.dropout(self.ffn(self.norm2(h)))

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """``h``: ``(B, N, D)``; ``mask``: ``(B, N)`` bool or ``None`` -> ``(B, N, D)``."""
        return self._finish(h, self.mixer(self.norm1(h), attention_mask=mask))

    def prefill(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Any]:
        x = self.norm1(h)
        if self.cache_kind == "recurrent":
            mixed, state = self.mixer.prefill(x, mask)
        else:
            mixed = self.mixer(x, attention_mask=mask)
            state = {"x": x, "mask": mask}
        return self._finish(h, mixed), state

    def extend(self, h: Tensor, mask: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        """Continue from ``state`` with ``N`` new positions ``h``: ``(B, N, D)``."""
        x = self.norm1(h)
        if self.cache_kind == "recurrent":
            # The model checked h and mask once; no value scan per generated token.
            mixed, state = self.mixer.step_through(x, state, attention_mask=mask, check_values=False)
        else:
            old_x, old_mask = state["x"], state["mask"]
            x_all = torch.cat([old_x, x], dim=1)
            if old_mask is None and mask is None:
                mask_all = None
            else:
                ones_old = torch.ones(old_x.shape[:2], dtype=torch.bool, device=x.device)
                ones_new = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                mask_all = torch.cat([ones_old if old_mask is None else old_mask,
                                      ones_new if mask is None else mask], dim=1)
            mixed = self.mixer(x_all, attention_mask=mask_all)[:, -x.shape[1]:]
            state = {"x": x_all, "mask": mask_all}
        return self._finish(h, mixed), state


# ------------------------------------------------------------------- helpers
def _as_bool_mask(mask: Tensor, what: str = "attention_mask") -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{what} must have shape (B, N) (1 = real token, 0 = padding), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"{what} must hold only 0/1 (or bool) values")
        mask = mask != 0
    return mask


def _reject_kwargs(owner: str, kwargs: dict[str, Any]) -> None:
    """Refuse arguments the model does not implement instead of ignoring them."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None and v is not False}
    if kwargs.pop("output_attentions", None):
        raise ValueError(f"{owner}: output_attentions is not supported (mixers do not expose attention maps)")
    if kwargs:
        raise TypeError(f"{owner}.forward() got unsupported argument(s): {', '.join(sorted(kwargs))}")


# --------------------------------------------------------------------- models
class WersaPreTrainedModel(PreTrainedModel):
    """Shared config class, weight init and loading behaviour."""

    config_class = WersaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["WersaBlock"]
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        model = super().from_pretrained(*args, **kwargs)
        model._realign_tensors()
        return model

    def _realign_tensors(self) -> None:
        """Copy weights that safetensors memory-mapped at an unaligned address.

        CPU BLAS kernels take different code paths for unaligned data, so a loaded
        model would differ from the saved one in the last bits. A fresh allocation is
        aligned, making the round trip exact. Parameters are changed in place
        (``.data``), so tied weights stay tied.
        """
        for t in list(self.parameters()) + list(self.buffers()):
            if t.device.type == "cpu" and t.numel() and t.data_ptr() % 64:
                t.data = t.data.clone()

    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_wersa_keep_init", False):
            return
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, WersaRMSNorm)):
            _init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, WersaForSequenceClassification) and module.cls_token is not None:
            _init.normal_(module.cls_token, mean=0.0, std=std)


class WersaModel(WersaPreTrainedModel):
    """The backbone: ``(B, N)`` token ids or ``(B, N, input_dim)`` values -> ``(B, N, D)``.

    ``config.causal=None`` builds bidirectional mixers when every layer's mixer has
    that form, causal ones otherwise.
    """

    def __init__(self, config: WersaConfig):
        super().__init__(config)
        specs = config.layer_specs()
        causal = config.causal
        if causal is None:
            causal = not all(capabilities(name, causal=False, **opts).bidirectional for name, opts in specs)
        self.causal = causal
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d) if config.vocab_size is not None else None
        self.input_proj = nn.Linear(config.input_dim, d) if config.input_dim is not None else None
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, d) if config.position_embedding_type == "learned" else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(WersaBlock(config, name, opts, causal) for name, opts in specs)
        if config.compile_step:
            recurrent = [layer for layer in self.layers if layer.cache_kind == "recurrent"]
            if not causal or not recurrent:
                raise ValueError(
                    "WersaConfig: compile_step=True compiles the token step of recurrent causal mixers, "
                    f"but this {'bidirectional model' if not causal else 'model has no recurrent layer'} "
                    "has none; set compile_step=False"
                )
            for layer in recurrent:
                layer.mixer.compile_step()
        self.norm = _make_norm(config)
        self.post_init()

    # ---------------------------------------------------------------- hooks
    def get_input_embeddings(self) -> nn.Module | None:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def new_cache(self) -> WersaCache:
        """An empty decoding cache for this model's layers."""
        return WersaCache([layer.cache_kind for layer in self.layers])

    def embed(
        self,
        input_ids: Tensor | None = None,
        input_values: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Token embeddings (no positions): exactly one of the three inputs -> ``(B, N, D)``."""
        given = [n for n, v in (("input_ids", input_ids), ("input_values", input_values),
                                ("inputs_embeds", inputs_embeds)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of input_ids, input_values, inputs_embeds; got {given or 'none'}")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (B, N, hidden_size={self.config.hidden_size}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            return inputs_embeds
        if input_ids is not None:
            if self.embed_tokens is None:
                raise ValueError(
                    f"this model takes float input_values of width input_dim={self.config.input_dim}, not input_ids"
                )
            if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise ValueError(
                    f"input_ids must be an integer tensor of shape (B, N), got {input_ids.dtype} {tuple(input_ids.shape)}"
                )
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
                raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size})")
            return self.embed_tokens(input_ids)
        if self.input_proj is None:
            raise ValueError(f"this model takes input_ids (vocab_size={self.config.vocab_size}), not input_values")
        if input_values.dim() != 3 or input_values.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"input_values must have shape (B, N, input_dim={self.config.input_dim}), got {tuple(input_values.shape)}"
            )
        if not input_values.is_floating_point():
            raise TypeError(f"input_values must be a floating-point tensor, got {input_values.dtype}")
        return self.input_proj(input_values.to(self.input_proj.weight.dtype))

    def _add_positions(self, h: Tensor, positions: Tensor) -> Tensor:
        kind = self.config.position_embedding_type
        if kind == "none":
            return h
        if self.config.max_position_embeddings is not None and positions.numel():
            top = int(positions.max())
            if top >= self.config.max_position_embeddings:
                raise ValueError(
                    f"position {top} exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                    f"build the config with a larger max_position_embeddings (or sinusoidal / none positions)"
                )
        if kind == "learned":
            return h + self.embed_positions(positions)
        return h + sinusoidal_embedding(positions, h.shape[-1], h.dtype)

    def _check_padding_layout(self, mask: Tensor, cache: WersaCache | None) -> None:
        """Left padding (a pad before a real token) needs mixers with ``left_padding``."""
        pad_seen = (~mask).cumsum(1) > 0
        if cache is not None and cache.pad_seen is not None:
            pad_seen = pad_seen | cache.pad_seen.unsqueeze(1)
        if not bool((pad_seen & mask).any()):
            return
        bad = sorted({layer.mixer_name for layer in self.layers if not layer.mixer.capabilities.left_padding})
        if bad:
            raise ValueError(
                f"attention_mask has padding before real tokens (left padding), which mixer(s) "
                f"{', '.join(bad)} cannot apply; pad on the right, or batch prompts of equal length"
            )

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: WersaCache | None = None,
        inputs_embeds: Tensor | None = None,
        input_values: Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: WersaCache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """Run the backbone on ``N`` new positions.

        Args:
            input_ids: ``(B, N)`` token ids, or ``input_values`` ``(B, N, input_dim)``, or
                ``inputs_embeds`` ``(B, N, D)`` (token embeddings; positions are added here).
            attention_mask: ``(B, N)`` or ``(B, P + N)`` with a cache; 1 = real token.
            position_ids: ``(B, N)`` (or ``(1, N)``); default: from the mask's cumsum.
            cache / past_key_values: a :class:`WersaCache` to continue from (causal models).
            use_cache: return a cache (default ``config.use_cache`` for causal models).
            cache_position: ``(N,)``; if given it must equal ``P .. P + N - 1``.

        Returns:
            ``last_hidden_state`` ``(B, N, D)``, ``cache``, optional ``hidden_states``.
        """
        _reject_kwargs(type(self).__name__, kwargs)
        if past_key_values is not None:
            if cache is not None and cache is not past_key_values:
                raise ValueError("pass the cache once, as cache or as past_key_values, not both")
            cache = past_key_values
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if use_cache is None:
            use_cache = cache is not None or (self.causal and self.config.use_cache)
        if (use_cache or cache is not None) and not self.causal:
            raise ValueError("use_cache / cache need a causal model (config.causal=True); this backbone is bidirectional")
        if cache is not None and not isinstance(cache, WersaCache):
            raise TypeError(
                f"cache must be a WersaCache (model.new_cache()), got {type(cache).__name__}; "
                f"wersa models keep mixer states, not transformers key/value caches"
            )
        if use_cache and cache is None:
            cache = self.new_cache()
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers but the model has {len(self.layers)}")

        h = self.embed(input_ids, input_values, inputs_embeds)
        batch, n = h.shape[:2]
        past = cache.seen_tokens if cache is not None else 0
        if cache is not None and cache.real_counts is not None and cache.real_counts.shape[0] != batch:
            raise ValueError(f"cache holds {cache.real_counts.shape[0]} sequences but the input has {batch}")

        # --- mask of the new positions
        if attention_mask is None:
            mask = torch.ones(batch, n, dtype=torch.bool, device=h.device)
        else:
            full = _as_bool_mask(attention_mask).to(h.device)
            if full.shape[0] != batch or full.shape[1] not in (n, past + n):
                raise ValueError(
                    f"attention_mask must have shape (B, N) = {(batch, n)} or (B, past + N) = {(batch, past + n)}, "
                    f"got {tuple(full.shape)}"
                )
            mask = full[:, full.shape[1] - n:]
        self._check_padding_layout(mask, cache)

        # --- positions
        if cache_position is not None:
            expected = torch.arange(past, past + n, device=cache_position.device)
            if cache_position.shape != expected.shape or not bool((cache_position == expected).all()):
                raise ValueError(f"cache_position must be arange({past}, {past + n}) for this cache")
        if position_ids is None:
            base = cache.real_counts if cache is not None and cache.real_counts is not None else None
            positions = mask.long().cumsum(1) - 1
            if base is not None:
                positions = positions + base.unsqueeze(1)
            positions = positions.clamp(min=0)
        else:
            if position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch) or position_ids.shape[1] < n:
                raise ValueError(f"position_ids must have shape (B, N) = {(batch, n)}, got {tuple(position_ids.shape)}")
            positions = position_ids[:, position_ids.shape[1] - n:].to(h.device).expand(batch, n)
            if positions.numel() and int(positions.min()) < 0:
                raise ValueError("position_ids must be non-negative")
        h = self.dropout(self._add_positions(h, positions))

        mixer_mask = None if bool(mask.all()) else mask
        hidden_states = [h] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if cache is None:
                h = layer(h, mixer_mask)
            elif cache.states[i] is None:
                h, cache.states[i] = layer.prefill(h, mixer_mask)
            else:
                h, cache.states[i] = layer.extend(h, mixer_mask, cache.states[i])
            if hidden_states is not None:
                hidden_states.append(h)
        h = self.norm(h)
        if hidden_states is not None:
            hidden_states[-1] = h

        if cache is not None:
            counts = mask.long().sum(1)
            cache.real_counts = counts if cache.real_counts is None else cache.real_counts + counts
            pads = (~mask).any(1)
            cache.pad_seen = pads if cache.pad_seen is None else cache.pad_seen | pads
            cache.seen_tokens = past + n

        out = BaseModelOutputWithPast(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **{_CACHE_FIELD: cache},
        )
        return out if return_dict else out.to_tuple()


class WersaForCausalLM(WersaPreTrainedModel, GenerationMixin):
    """Causal language model: ``(B, N)`` ids -> logits ``(B, N, V)``; labels are shifted inside.

    ``generate()`` prefills every layer's mixer state from the prompt and then
    steps one token at a time: constant memory per token for recurrent mixers
    with a constant state, a KV cache for exact attention.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _is_stateful = True  # states cannot be rolled back (no assisted generation)

    def __init__(self, config: WersaConfig):
        if config.vocab_size is None:
            raise ValueError("WersaForCausalLM needs token inputs: set vocab_size (and input_dim=None) in the config")
        if config.causal is False:
            raise ValueError("WersaForCausalLM needs causal mixers: set causal=True (or None) in the config")
        config.causal = True  # recorded so the saved config rebuilds the same model
        super().__init__(config)
        self.model = WersaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a key/value DynamicCache; forward() makes a WersaCache

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: WersaCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: Tensor | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: WersaCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits ``(B, N, V)`` (the last ``logits_to_keep`` positions if > 0).

        ``labels``: ``(B, N)`` token ids, ``-100`` ignored; the loss predicts
        ``labels[:, t + 1]`` from position ``t`` (shifted here, as in transformers).
        ``use_cache`` defaults to ``config.use_cache`` without labels, ``False`` with them.
        """
        _reject_kwargs(type(self).__name__, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if use_cache is None:
            use_cache = self.config.use_cache and labels is None
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be a non-negative int, got {logits_to_keep!r}")
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache_position=cache_position,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2] or logits_to_keep:
                raise ValueError(
                    f"labels must have shape (B, N) = {tuple(logits.shape[:2])} (and logits_to_keep=0), "
                    f"got {tuple(labels.shape)}"
                )
            # at least float32 for the softmax of the loss (half-precision logits lose too much)
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_logits = shift_logits.to(torch.promote_types(shift_logits.dtype, torch.float32))
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)},
        )
        return result if return_dict else result.to_tuple()


class WersaForSequenceClassification(WersaPreTrainedModel):
    """Sequence classifier: pooled backbone -> ``(B, num_labels)`` logits.

    Inputs are right-padded; pooling uses real tokens only, so padding never
    changes the logits. ``config.classifier_pooling``: ``"mean"``, ``"cls"`` (a
    learned token prepended at position 0; learned positions then need
    ``max_position_embeddings >= N + 1``) or ``"last"`` (last real token).
    """

    main_input_name = "input_ids"

    def __init__(self, config: WersaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = WersaModel(config)
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.classifier_pooling == "cls" else None
        )
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        input_values: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        """``(B, N)`` ids or ``(B, N, input_dim)`` values -> logits ``(B, num_labels)``.

        ``labels``: ``(B,)`` class ids (cross-entropy), floats for ``num_labels == 1``
        (MSE), or ``(B, num_labels)`` multi-hot with ``problem_type="multi_label_classification"``.
        """
        _reject_kwargs(type(self).__name__, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        h = self.model.embed(input_ids, input_values, inputs_embeds)
        batch, n = h.shape[:2]
        if attention_mask is None:
            mask = torch.ones(batch, n, dtype=torch.bool, device=h.device)
        else:
            mask = _as_bool_mask(attention_mask).to(h.device)
            if tuple(mask.shape) != (batch, n):
                raise ValueError(f"attention_mask must have shape (B, N) = {(batch, n)}, got {tuple(mask.shape)}")
        if not bool(mask.any(1).all()):
            raise ValueError("every sequence needs at least one real token (a row of attention_mask is all 0)")
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.to(h.dtype).expand(batch, 1, -1), h], dim=1)
            mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=h.device), mask], dim=1)
        out = self.model(inputs_embeds=h, attention_mask=mask, use_cache=False,
                         output_hidden_states=output_hidden_states, return_dict=True)
        hs = out.last_hidden_state
        pooling = self.config.classifier_pooling
        if pooling == "cls":
            pooled = hs[:, 0]
        elif pooling == "mean":
            w = mask.unsqueeze(-1).to(hs.dtype)
            pooled = (hs * w).sum(1) / w.sum(1)
        else:  # last real token
            idx = torch.arange(mask.shape[1], device=h.device).expand_as(mask).masked_fill(~mask, -1).amax(1)
            pooled = hs[torch.arange(batch, device=h.device), idx]
        logits = self.score(self.dropout(pooled))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            problem = self.config.problem_type
            if problem is None:
                if self.num_labels == 1:
                    problem = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    problem = "single_label_classification"
                else:
                    problem = "multi_label_classification"
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().reshape(-1))
            elif problem == "single_label_classification":
                if labels.shape != (batch,):
                    raise ValueError(f"labels must have shape (B,) = ({batch},) of class ids, got {tuple(labels.shape)}")
                loss = F.cross_entropy(logits.float(), labels.long())
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        result = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()
