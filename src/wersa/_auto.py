"""Register ``model_type = "wersa"`` with the ``transformers`` Auto classes, lazily.

``import wersa`` must make ``AutoModelForCausalLM.from_pretrained(folder)`` work in a
new process, but importing ``transformers`` and the models costs seconds, so it is
not done up front. Instead:

* if ``transformers``' auto modules are already imported, register now;
* otherwise an import hook waits for them: once
  ``transformers.models.auto.configuration_auto`` has run, ``WersaConfig`` is
  registered with ``AutoConfig``; once ``...modeling_auto`` has run, the model classes
  are registered with ``AutoModel``, ``AutoModelForCausalLM`` and
  ``AutoModelForSequenceClassification``.

Each registration happens after the auto module has finished executing (never while
it is half-built). ``transformers.modeling_utils`` imports ``configuration_auto``
part-way through its own import, which is why the config step imports only
``wersa.models.configuration`` (it needs ``configuration_utils`` alone) and the model
classes wait for ``modeling_auto``.
"""

from __future__ import annotations

import sys
import warnings

CONFIG_MODULE = "transformers.models.auto.configuration_auto"
MODELING_MODULE = "transformers.models.auto.modeling_auto"


def register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .models.configuration import WersaConfig

    AutoConfig.register("wersa", WersaConfig, exist_ok=True)  # exist_ok: reloads must not fail


def register_models() -> None:
    from transformers.models.auto.modeling_auto import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    from .models.configuration import WersaConfig
    from .models.modeling import WersaForCausalLM, WersaForSequenceClassification, WersaModel

    register_config()
    AutoModel.register(WersaConfig, WersaModel, exist_ok=True)
    AutoModelForSequenceClassification.register(WersaConfig, WersaForSequenceClassification, exist_ok=True)
    AutoModelForCausalLM.register(WersaConfig, WersaForCausalLM, exist_ok=True)


_STEPS = {CONFIG_MODULE: register_config, MODELING_MODULE: register_models}


def _run(name: str) -> None:
    try:
        _STEPS[name]()
    except Exception as exc:  # never break someone's `import transformers`
        warnings.warn(f"wersa: could not register with the transformers Auto classes ({exc!r}); "
                      f"`import wersa.models` registers them explicitly", RuntimeWarning, stacklevel=2)


class _Loader:  # duck-typed importlib Loader (importlib.abc costs an import at `import wersa`)
    """Runs the real loader, then the registration step for that module."""

    def __init__(self, loader, name: str):  # loader: the real importlib Loader
        self.loader, self.name = loader, name

    def __getattr__(self, attr):  # get_code, is_package, get_resource_reader, ...
        return getattr(self.loader, attr)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _run(self.name)


class _Finder:  # duck-typed importlib MetaPathFinder
    def __init__(self) -> None:
        self.busy = False

    def find_spec(self, fullname, path, target=None):
        if fullname not in _STEPS or self.busy:
            return None
        import importlib.util

        self.busy = True  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, fullname)
        return spec


def install() -> None:
    """Register now what is already imported; hook the rest. Idempotent."""
    pending = []
    for name in _STEPS:
        module = sys.modules.get(name)
        if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
            _run(name)
        else:
            pending.append(name)
    if pending and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
