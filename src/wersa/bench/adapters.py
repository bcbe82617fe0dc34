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
import pkgutil
from typing import Any, Callable

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

    try:
        wersa.capabilities(name)
    except ValueError as exc:
        raise Unavailable(str(exc)) from None


def mixer_capabilities(name: str):
    """The registry's capabilities of mixer ``name``."""
    import wersa

    return wersa.capabilities(name)


def build_mixer(name: str, dim: int, num_heads: int, causal: bool = False, **options) -> nn.Module:
    import wersa

    return wersa.build_mixer(name, dim=dim, num_heads=num_heads, causal=causal, **options)


# ------------------------------------------------------------------ tasks
def _tasks_registry():
    """The task registry module, with every task module of :mod:`wersa.tasks` imported."""
    try:
        import wersa.tasks as tasks_pkg
        reg = importlib.import_module("wersa.tasks.registry")
    except ModuleNotFoundError as exc:
        raise Unavailable(f"the tasks layer is not available ({exc})") from None
    # Import every task module so each registers itself, whether or not the package
    # __init__ lists it; a module that fails to import (a missing optional
    # dependency) only removes its own tasks.
    for info in pkgutil.iter_modules(tasks_pkg.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"wersa.tasks.{info.name}")
        except Exception:  # noqa: BLE001 - an unavailable task is reported when asked for
            pass
    return reg


def list_tasks() -> list[str]:
    try:
        return list(_tasks_registry().list_tasks())
    except Unavailable:
        return []


def build_task(name: str, options: dict[str, Any] | None = None, factory: str | None = None,
               cache_dir: str | None = None):
    """Build task ``name`` with ``options`` (or call ``factory`` when given).

    ``cache_dir`` is passed on to tasks that accept one (generated data is cached there).
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
    reg = _tasks_registry()
    if name not in reg.list_tasks():
        try:
            reg.task_class(name)
        except ValueError as exc:
            raise Unavailable(str(exc)) from None
    accepted = reg.task_options(name)
    if "cache_dir" in options and "cache_dir" not in accepted:
        options.pop("cache_dir")
    return reg.build_task(name, **options)


def task_info(task) -> Any:
    return task.info


def describe_task(name: str, options: dict[str, Any] | None = None) -> str:
    """A description of task ``name``: the tasks layer's own ``describe`` if it has one."""
    reg = _tasks_registry()
    for mod in ("wersa.tasks", "wersa.tasks.describe", "wersa.tasks.registry"):
        try:
            fn = getattr(importlib.import_module(mod), "describe_task", None) or \
                getattr(importlib.import_module(mod), "describe", None)
        except ModuleNotFoundError:
            fn = None
        if callable(fn):
            out = fn(name, **(options or {}))
            return out if isinstance(out, str) else _format_description(out)
    task = build_task(name, options)
    lines = [f"task: {name}", *(f"  {k}: {v}" for k, v in task.info.as_dict().items())]
    lines.append(f"  options: {reg.task_options(name)}")
    return "\n".join(lines)


def _format_description(obj: Any) -> str:
    if isinstance(obj, dict):
        return "\n".join(f"{k}: {v}" for k, v in obj.items())
    return str(obj)


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
    try:
        models = importlib.import_module("wersa.models")
        config_cls = getattr(models, "WersaConfig")
        cls_name = "WersaForCausalLM" if info.kind == "language_modeling" else "WersaForSequenceClassification"
        model_cls = getattr(models, cls_name)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise Unavailable(f"the models layer does not provide WersaConfig and the model classes yet ({exc})") from None
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
    config = config_cls(**fields)
    return model_cls(config)


def model_output(out: Any, name: str) -> torch.Tensor:
    """``out.loss`` / ``out.logits`` of a model output that may be a dict or a ModelOutput."""
    if isinstance(out, dict):
        return out[name]
    return getattr(out, name)


def resolve(obj: str | Callable | None) -> Callable | None:
    return import_object(obj) if isinstance(obj, str) else obj
