"""The harness's one door into the layers below it: mixers, models and tasks.

Everything the benchmark harness needs from :mod:`wersa.models` and
:mod:`wersa.tasks` goes through the few functions here, so a change in those
layers is absorbed in one place. Stand-ins (a user's own task or model, or the
small ones the tests use) are given as import paths ``"package.module:attr"``:

* a task factory ``f(**task_options) -> Task`` (the :class:`wersa.tasks.base.Task`
  interface: ``info``, ``loader(split, batch_size, ...)``);
* a model factory ``f(task_info, mixer, mixer_options, length, model_options) ->
  nn.Module`` whose ``forward(input_ids, attention_mask, labels)`` returns an
  object (or dict) with ``loss`` and ``logits``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn


class Unavailable(RuntimeError):
    """A mixer, task or model the harness was asked for is not available here (recorded as skipped)."""


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``)."""
    if ":" in path:
        mod_name, _, attr = path.partition(":")
    else:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"expected an import path 'package.module:name', got {path!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import {mod_name!r} (from {path!r}): {exc}; is it on PYTHONPATH?") from exc
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ValueError(f"module {mod_name!r} has no attribute {attr!r} (from {path!r})") from None


def load_plugins(modules: list[str] | tuple[str, ...] | None) -> None:
    """Import user modules that register extra mixers or tasks (``--plugin``)."""
    for name in modules or ():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ValueError(f"--plugin {name!r}: cannot import it ({exc}); check the name and PYTHONPATH") from exc


# ------------------------------------------------------------------ mixers
def list_mixers() -> list[str]:
    import wersa

    return wersa.list_mixers()


def check_mixer(name: str) -> None:
    """Raise :class:`Unavailable` (with a "did you mean") when mixer ``name`` is not registered."""
    import wersa

    if name not in wersa.list_mixers():
        try:
            wersa.capabilities(name)
        except ValueError as exc:
            raise Unavailable(str(exc)) from None


def mixer_capabilities(name: str, causal: bool | None = None, **options: Any):
    """The capabilities of mixer ``name`` built with ``options`` (per instance, not the class's claim)."""
    import wersa

    if causal is not None:
        options["causal"] = causal
    return wersa.capabilities(name, **options)


def build_mixer(name: str, dim: int, num_heads: int, causal: bool = False, **options) -> nn.Module:
    import wersa

    return wersa.build_mixer(name, dim=dim, num_heads=num_heads, causal=causal, **options)


def mixer_regime(mixer: nn.Module, length: int | None) -> Any:
    """The computation ``mixer`` runs at ``length`` tokens, where it has more than one (``mixer.regime(n)``).

    ``None`` when the mixer exposes no ``regime`` (it always runs the same computation).
    """
    regime = getattr(mixer, "regime", None)
    if not callable(regime) or length is None:
        return None
    return regime(int(length))


def model_regimes(model: nn.Module, length: int | None) -> list[Any] | None:
    """:func:`mixer_regime` of every mixer inside ``model`` (the distinct values, in order), or ``None``."""
    from wersa.mixers import Mixer

    found = []
    for module in model.modules():
        if isinstance(module, Mixer):
            r = mixer_regime(module, length)
            if r is not None and r not in found:
                found.append(r)
    return found or None


# ------------------------------------------------------------------ tasks
def list_tasks() -> list[str]:
    from wersa import tasks

    return list(tasks.list_tasks())


def build_task(name: str, options: dict[str, Any] | None = None, factory: str | None = None,
               cache_dir: str | None = None):
    """Build task ``name`` with ``options`` (or call ``factory`` when given).

    ``cache_dir`` is passed on to tasks that accept one (generated data is cached there).
    An unknown task name raises :class:`Unavailable` (with a "did you mean").
    """
    options = dict(options or {})
    if cache_dir is not None:
        options.setdefault("cache_dir", cache_dir)
    if factory:
        fn = import_object(factory)
        import inspect

        params = inspect.signature(fn).parameters
        if "cache_dir" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            options.pop("cache_dir", None)
        return fn(**options)
    from wersa import tasks

    try:
        tasks.task_class(name)
    except ValueError as exc:
        raise Unavailable(str(exc)) from None
    if "cache_dir" in options and "cache_dir" not in tasks.task_options(name):
        options.pop("cache_dir")
    return tasks.build_task(name, **options)


def describe_task(name: str, options: dict[str, Any] | None = None) -> str:
    """What task ``name`` yields (sizes, lengths, vocabulary, source), as Markdown."""
    from wersa import tasks

    return tasks.describe_task(name, **(options or {}))


# ------------------------------------------------------------------ models
def build_model(info, mixer: str, mixer_options: dict[str, Any] | None, length: int | None,
                model_options: dict[str, Any] | None, factory: str | None = None) -> nn.Module:
    """A model for task ``info`` built on ``mixer``.

    Classification tasks get ``WersaForSequenceClassification``, language modelling
    ``WersaForCausalLM`` (from :mod:`wersa.models`), sized by ``model_options``
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``intermediate_size``, ``pooling``, ...: any field of ``WersaConfig``).
    """
    mixer_options = dict(mixer_options or {})
    model_options = dict(model_options or {})
    if factory:
        return import_object(factory)(info, mixer, mixer_options, length, model_options)
    from wersa.models import WersaConfig, WersaForCausalLM, WersaForSequenceClassification

    model_cls = WersaForCausalLM if info.kind == "language_modeling" else WersaForSequenceClassification
    fields: dict[str, Any] = dict(mixer=mixer, mixer_options=mixer_options, vocab_size=info.vocab_size)
    if info.kind != "language_modeling":
        fields["num_labels"] = int(info.num_classes)
    want_pos = max(int(length or 0), int(getattr(info, "max_length", 0) or 0))
    if want_pos:
        fields["max_position_embeddings"] = want_pos
    pad_id = getattr(info, "pad_id", None)
    if pad_id is not None:
        fields["pad_token_id"] = pad_id
    fields.update(model_options)
    return model_cls(WersaConfig(**fields))


def model_output(out: Any, name: str) -> torch.Tensor:
    """``out.loss`` / ``out.logits`` of a model output that may be a dict or a ModelOutput."""
    if isinstance(out, dict):
        return out[name]
    return getattr(out, name)
