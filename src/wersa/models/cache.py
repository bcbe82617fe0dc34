"""``WersaCache``: the decoding cache of the causal models.

One entry per layer, holding whatever that layer's mixer needs to continue a
sequence token by token:

* ``"recurrent"`` layers (mixers with ``capabilities.recurrent``) keep the
  mixer's own state from :meth:`Mixer.prefill` / :meth:`Mixer.step`: a
  constant-size state for linear mixers (``constant_state``), a KV cache for
  exact attention.
* ``"history"`` layers (causal mixers without a token-by-token form) keep the
  layer's normalised inputs and recompute the mixer over the whole history for
  the new tokens. Exact, because the mixer is causal, but memory grows with the
  context; it exists so that every causal mixer can generate.

It subclasses ``transformers.Cache`` so that ``generate()`` threads it through
``cache`` / ``past_key_values`` like any other cache, but it does not use the
key/value layer objects of that class.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from transformers import Cache


def map_batch(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor of a (nested dict/list/tuple) state.

    Mixer states keep the batch on dimension 0 of every tensor (the contract of
    ``Mixer._select_state``), so ``fn`` is a batch-dimension operation.
    """
    if isinstance(state, Tensor):
        return fn(state) if state.dim() > 0 else state
    if isinstance(state, dict):
        return {k: map_batch(v, fn) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_batch(v, fn) for v in state)
    return state


class WersaCache(Cache):
    """Per-layer decoding states plus the bookkeeping shared by all layers.

    Attributes:
        kinds: ``"recurrent"`` or ``"history"`` per layer.
        states: per layer, ``None`` before the prompt is processed, then the state.
        seen_tokens: positions processed so far (padding included), ``= past length``.
        real_counts: ``(B,)`` real (unpadded) tokens seen per sequence; the next
            token's position id when positions are derived from the mask.
        pad_seen: ``(B,)`` whether a padding position was seen (left padding check).
    """

    is_compileable = False

    def __init__(self, kinds: list[str]):
        super().__init__(layers=[])
        for k in kinds:
            if k not in ("recurrent", "history"):
                raise ValueError(f"WersaCache: layer kind must be 'recurrent' or 'history', got {k!r}")
        self.kinds = list(kinds)
        self.states: list[Any] = [None] * len(kinds)
        self.seen_tokens = 0
        self.real_counts: Tensor | None = None
        self.pad_seen: Tensor | None = None  # (B,) bool: a padding position was seen

    # ------------------------------------------------------------ Cache API
    def __len__(self) -> int:
        return len(self.kinds)

    def __repr__(self) -> str:
        return f"WersaCache(layers={self.kinds}, seen_tokens={self.seen_tokens})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # unbounded

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    @property
    def is_initialized(self) -> bool:
        return self.seen_tokens > 0

    @property
    def is_croppable(self) -> bool:
        return False  # a recurrent state cannot forget tokens

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.kinds)

    @property
    def is_linear(self) -> list[bool]:
        # False: the cache has a sequence position, so generate() slices prompts by get_seq_length().
        return [False] * len(self.kinds)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.kinds)

    @property
    def batch_size(self) -> int | None:
        return None if self.real_counts is None else int(self.real_counts.shape[0])

    def reset(self) -> None:
        self.states = [None] * len(self.kinds)
        self.seen_tokens = 0
        self.real_counts = None
        self.pad_seen = None

    def crop(self, max_length: int) -> None:
        raise ValueError(
            "WersaCache cannot be cropped: a recurrent state cannot forget tokens; "
            "re-run the prompt instead (assisted generation and DoLa are not supported)"
        )

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.states = [map_batch(s, fn) for s in self.states]
        if self.real_counts is not None:
            self.real_counts = fn(self.real_counts)
        if self.pad_seen is not None:
            self.pad_seen = fn(self.pad_seen)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the states of the chosen beams."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices.to(t.device)])

    def update(self, *args: Any, **kwargs: Any):
        raise TypeError("WersaCache holds mixer states, not keys/values; the wersa models update it themselves")

    def offload(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("WersaCache does not support offloading; use cache_implementation=None")

    def prefetch(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("WersaCache does not support offloading; use cache_implementation=None")
