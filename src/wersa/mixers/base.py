"""The Mixer contract: one interface for every token-mixing mechanism.

Every mechanism in :mod:`wersa.mixers` subclasses :class:`Mixer` and declares a
frozen :class:`Capabilities`. The base class owns everything that must behave the
same for all mechanisms, so each mechanism file only holds its math:

* argument checking (rank, width, dtype, device, NaN/Inf, mask shape) with errors
  that name the argument and the fix;
* refusing requests the mechanism cannot honour (``causal=True`` on a
  bidirectional-only mixer, a padding mask on a mixer that cannot apply one, a
  length beyond ``max_len``) with a ``ValueError`` naming the mechanism;
* the empty sequence (``N = 0`` returns an empty output);
* zeroing outputs at padded positions, so all-padding rows are exactly zero;
* the token-by-token API (``init_state`` / ``step`` / ``step_through`` / ``prefill``),
  and running ``step`` through ``torch.compile`` (:meth:`Mixer.compile_step`).

Conventions, shared by the whole library:

* ``x``: ``(B, N, D)`` with ``D = dim``; outputs have the same shape.
* ``attention_mask``: ``(B, N)``, ``True``/``1`` marks a real token, ``False``/``0``
  a padded one. A mixer that declares ``attention_mask=True`` guarantees that the
  outputs at real positions of a right-padded sequence equal those of the unpadded
  sequence; ``left_padding=True`` extends the guarantee to left padding.
* causal: output ``t`` depends on inputs ``0..t`` only (bottom-right alignment when
  decoding from a cache: the newest query sees every cached key).
* window / kernel size: the number of keys a query attends to, itself included.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Mixer._compiled_step: (class, options) -> torch.compile(cls._step, **options).
_COMPILED_STEPS: dict[tuple, Callable] = {}


def _all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN or Inf: its min and max in one read (NaN propagates through
    both), without ``isfinite``'s input-sized temporaries."""
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


@dataclass(frozen=True)
class Capabilities:
    """What a mechanism supports. Drives the test matrix and the benchmark harness.

    Attributes:
        name: registry name.
        causal: has a causal (autoregressive) form.
        bidirectional: has a bidirectional (encoder) form.
        attention_mask: honours a right-padding ``attention_mask`` in every mode it has.
        left_padding: also honours left padding (prompts for batched generation).
        recurrent: implements ``init_state`` / ``step`` in causal mode.
        constant_state: the recurrent state does not grow with the context
            (``False`` for a KV cache).
        linear_time: time and memory grow linearly (or ``N log N``) with length.
        max_len: longest sequence the mechanism accepts (``None`` = unbounded).
        quadratic_below: lengths below this run an exact quadratic path (``None`` = none),
            e.g. HyperAttention below its ``min_seq_len``; ``linear_time`` is the claim above it.
        summary: one line saying what it is.
        reference: the paper it implements.
    """

    name: str
    causal: bool
    bidirectional: bool
    attention_mask: bool
    recurrent: bool = False
    left_padding: bool = False
    constant_state: bool = False
    linear_time: bool = True
    max_len: int | None = None
    quadratic_below: int | None = None
    summary: str = ""
    reference: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Mixer(nn.Module):
    """Base class of every token mixer: ``(B, N, D) -> (B, N, D)``.

    Subclasses set the class attribute ``capabilities`` and implement
    ``_forward(x, mask)`` where ``x`` is validated and ``mask`` is either ``None``
    (no padding) or a boolean ``(B, N)`` tensor with at least one ``False``.
    Recurrent mixers also implement ``_init_state`` and ``_step``.
    """

    capabilities: ClassVar[Capabilities]
    check_finite: bool = True  # set False to skip the NaN/Inf scan of the input
    # torch.compile options of the token step (None: eager); set by compile_step().
    step_compile_options: dict[str, Any] | None = None
    # Whether _step compiles to one graph (compile_step's default fullgraph).
    step_fullgraph: ClassVar[bool] = False
    # Names changed since 0.1.0, old -> new (listed in CHANGELOG.md). The registry maps
    # old option names with a FutureWarning (an old name may map to a tuple of new names
    # that all take its value); old state-dict key prefixes load as the new ones.
    renamed_options: ClassVar[dict[str, str]] = {}
    # Option sets, besides the defaults, that the capability matrix and the property tests
    # build this mixer with (wersa.mixer_example_options): every option that changes a
    # claim, and chunk / block / level sizes small enough to reach the chunked and
    # multi-level code paths at test lengths (tens of tokens).
    example_options: ClassVar[tuple[dict[str, Any], ...]] = ()
    renamed_parameters: ClassVar[dict[str, str]] = {}

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        caps = self.capabilities
        name = caps.name
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"{name}: dim must be a positive integer, got {dim!r}")
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
            raise ValueError(f"{name}: num_heads must be a positive integer, got {num_heads!r}")
        if dim % num_heads != 0:
            raise ValueError(
                f"{name}: num_heads={num_heads} does not divide dim={dim}; "
                f"choose num_heads among the divisors of {dim}"
            )
        if causal and not caps.causal:
            raise ValueError(f"{name} has no causal form ({caps.summary}); use causal=False")
        if not causal and not caps.bidirectional:
            raise ValueError(f"{name} is causal only; use causal=True")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = bool(causal)

    # ------------------------------------------------------------------ checks
    def _reference_tensor(self) -> Tensor | None:
        for t in self.parameters():
            return t
        for t in self.buffers():
            if t.is_floating_point():
                return t
        return None

    def _check_x(self, x: Tensor, what: str = "x", rank: int = 3, scan: bool = True) -> None:
        name = self.capabilities.name
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name}: {what} must be a floating-point tensor (float32, float64, bfloat16, float16), "
                f"got {x.dtype}; embed token ids first"
            )
        shape_doc = "(B, N, D)" if rank == 3 else "(B, D)"
        if x.dim() != rank:
            raise ValueError(f"{name}: {what} must have shape {shape_doc}, got {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"{name}: {what} has width {x.shape[-1]} but the mixer was built with dim={self.dim}"
            )
        ref = self._reference_tensor()
        if ref is not None:
            if x.device != ref.device:
                raise ValueError(
                    f"{name}: {what} is on {x.device} but the mixer's parameters are on {ref.device}; "
                    f"move one with .to(device)"
                )
            if x.dtype != ref.dtype:
                raise TypeError(
                    f"{name}: {what} has dtype {x.dtype} but the mixer's parameters are {ref.dtype}; "
                    f"cast the module with .to({x.dtype}) or use torch.autocast"
                )
        if scan and self.check_finite and x.numel() and not _all_finite(x):
            raise ValueError(
                f"{name}: {what} contains NaN or Inf; check the layer that produced it "
                f"(set mixer.check_finite = False to skip this check)"
            )

    def _check_mask(self, mask: Tensor | None, batch: int, length: int, device) -> Tensor | None:
        """Return ``None`` (no padding) or a boolean ``(B, N)`` mask with a padded position."""
        if mask is None:
            return None
        name = self.capabilities.name
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name}: attention_mask must be a torch.Tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != (batch, length):
            raise ValueError(
                f"{name}: attention_mask must have shape (B, N) = {(batch, length)}, got {tuple(mask.shape)}"
            )
        if mask.device != device:
            raise ValueError(f"{name}: attention_mask is on {mask.device} but x is on {device}")
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError(f"{name}: attention_mask must hold only 0/1 (or bool) values")
            mask = mask != 0
        if bool(mask.all()):
            return None
        if not self.capabilities.attention_mask:
            raise ValueError(
                f"{name} cannot apply an attention_mask with padded positions "
                f"({self.capabilities.summary}); pass unpadded sequences of equal length"
            )
        return mask

    def _check_step_mask(self, mask: Tensor, batch: int, device) -> Tensor:
        """A ``(B,)`` step mask as bool, checked without reading its values (no host sync).

        Padded steps are applied with ``torch.where`` whatever the values, so a mixer that
        cannot apply a mask is refused by :meth:`_check_mask` in ``prefill`` / ``step_through``.
        """
        name = self.capabilities.name
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name}: attention_mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"{name}: step's attention_mask must be bool (True = real token) or integer "
                            f"0/1, got {mask.dtype} (a float mask could be additive, 0/-inf; "
                            f"convert with mask.bool() or mask == 0)")
        if tuple(mask.shape) != (batch,):
            raise ValueError(f"{name}: a step's attention_mask must have shape (B,) = ({batch},), "
                             f"got {tuple(mask.shape)}")
        if mask.device != device:
            raise ValueError(f"{name}: attention_mask is on {mask.device} but x_t is on {device}")
        return mask.reshape(batch) != 0

    def _check_length(self, n: int) -> None:
        caps = self.capabilities
        if caps.max_len is not None and n > caps.max_len:
            raise ValueError(
                f"{caps.name}: sequence length {n} exceeds this mixer's max_len={caps.max_len}; "
                f"build it with a larger max_len"
            )

    @classmethod
    def capabilities_for(cls, causal: bool = False, **options: Any) -> Capabilities:
        """What an instance built as ``cls(dim, num_heads, causal=causal, **options)`` supports.

        ``options`` holds every constructor option (defaults filled in by the registry).
        The default is the class's claim; a mechanism whose claims depend on its options
        overrides this and sets ``self.capabilities = type(self).capabilities_for(...)`` in
        ``__init__``, so :func:`wersa.capabilities` (with options) and the instance agree.
        """
        return cls.capabilities

    @property
    def max_len(self) -> int | None:
        return self.capabilities.max_len

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mix tokens. ``x``: ``(B, N, D)``; ``attention_mask``: ``(B, N)`` or ``None``.

        Returns ``(B, N, D)``; outputs at padded positions are zero.
        """
        self._check_x(x)
        batch, n, _ = x.shape
        mask = self._check_mask(attention_mask, batch, n, x.device)
        self._check_length(n)
        if n == 0 or batch == 0:
            return x * 0.0
        y = self._forward(x, mask)
        if mask is not None:
            y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
        return y

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # --------------------------------------------------------------- recurrent
    def _require_recurrent(self) -> None:
        caps = self.capabilities
        if not caps.recurrent:
            raise ValueError(f"{caps.name} has no token-by-token (recurrent) form")
        if not self.causal:
            raise ValueError(f"{caps.name}: step() needs a causal mixer; build it with causal=True")

    def init_state(self, batch_size: int, device=None, dtype=None) -> Any:
        """The empty decoding state for ``batch_size`` sequences."""
        self._require_recurrent()
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"{self.capabilities.name}: batch_size must be a positive integer, got {batch_size!r}")
        ref = self._reference_tensor()
        device = device if device is not None else (ref.device if ref is not None else torch.device("cpu"))
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.get_default_dtype())
        return self._init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: Any, attention_mask: Tensor | None = None) -> tuple[Tensor, Any]:
        """Process one token per sequence. ``x_t``: ``(B, D)`` -> ``((B, D), new_state)``.

        ``attention_mask``: optional ``(B,)``; a ``False`` entry marks a padding
        token: its output is zero and that sequence's state is left unchanged.

        No host sync per token: ``x_t`` is not scanned for NaN/Inf and the mask's values
        are not read (shapes, dtypes and devices are checked). :meth:`step_through`,
        :meth:`prefill` and ``forward`` scan their inputs once.
        """
        self._require_recurrent()
        # Per-token path: checks that read tensor values (the NaN/Inf scan, "is any token
        # padded?") force a device-to-host sync per generated token on an accelerator, so
        # step checks shapes, dtypes and devices only; forward, prefill and step_through
        # scan their whole input once.
        self._check_x(x_t, "x_t", rank=2, scan=False)
        self._check_state_batch(state, x_t.shape[0])
        mask = None
        if attention_mask is not None:
            mask = self._check_step_mask(attention_mask, x_t.shape[0], x_t.device)
        step = self._step if self.step_compile_options is None else self._compiled_step()
        y, new_state = step(x_t, state, *self._step_inputs(x_t))
        if mask is not None:
            new_state = self._select_state(mask, new_state, state)
            y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
        return y, new_state

    def compile_step(self, enable: bool = True, **options: Any) -> "Mixer":
        """Run :meth:`step` (and so ``step_through`` and the models' decoding) through
        ``torch.compile``; ``compile_step(False)`` goes back to eager. Returns ``self``.

        A decoding step does a fixed, small amount of work, so its time is mostly the
        per-operator overhead of eager mode, which compilation removes (inductor fuses the
        elementwise work into a few loops). The first step of each new shape (batch size,
        dtype) compiles, which takes seconds; values, states and gradients equal eager's up
        to floating-point rounding. ``options`` go to ``torch.compile`` (``mode``,
        ``backend``, ``dynamic``, ``fullgraph``; ``fullgraph`` defaults to
        ``step_fullgraph``, ``True`` for mixers whose step is one graph). On CPU
        inductor needs a C++ compiler.

        Only the token step is compiled; the parallel forms (``forward``, ``prefill``)
        stay eager. The setting is a plain attribute (``step_compile_options``), so copies
        of the module keep it; the compiled function is shared by the instances of a class.
        """
        self._require_recurrent()
        if not enable:
            self.step_compile_options = None
            return self
        options = {"fullgraph": type(self).step_fullgraph, **options}
        try:
            inspect.signature(torch.compile).bind(None, **options)
        except TypeError as err:
            raise TypeError(f"{self.capabilities.name}.compile_step: {err}; the options are those of "
                            f"torch.compile (mode, backend, dynamic, fullgraph, options)") from None
        self.step_compile_options = options
        return self

    def _compiled_step(self) -> Callable[..., tuple[Tensor, Any]]:
        """``self._step`` compiled with ``step_compile_options`` (one compiled function per
        class and options, kept outside the instance so that copies and pickles stay plain)."""
        options = self.step_compile_options
        key = (type(self), repr(sorted(options.items())))
        fn = _COMPILED_STEPS.get(key)
        if fn is None:
            fn = _COMPILED_STEPS[key] = torch.compile(type(self)._step, **options)
        return lambda *args: fn(self, *args)

    def _step_inputs(self, x_t: Tensor) -> tuple:
        """Extra arguments of :meth:`_step` computed eagerly before it (e.g. constants cached
        across tokens, which a compiled step should receive rather than recompute)."""
        return ()

    def _check_state_batch(self, state: Any, batch: int) -> None:
        """``state`` must hold ``batch`` sequences: every state tensor is batch-first, so a
        state whose tensors all have another leading size belongs to another batch."""
        sizes: set[int] = set()

        def visit(obj: Any, depth: int) -> None:
            if isinstance(obj, Tensor):
                if obj.dim() >= 1:
                    sizes.add(int(obj.shape[0]))
            elif depth < 4:
                items = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
                         else vars(obj).values() if hasattr(obj, "__dict__") and not isinstance(obj, nn.Module)
                         else ())
                for item in items:
                    visit(item, depth + 1)

        visit(state, 0)
        if sizes and batch not in sizes:
            raise ValueError(f"{self.capabilities.name}: x_t holds {batch} sequences but the state holds "
                             f"{min(sizes)}; build the state with init_state({batch}) or prefill this batch")

    def step_through(self, x: Tensor, state: Any = None, attention_mask: Tensor | None = None,
                     check_values: bool = True) -> tuple[Tensor, Any]:
        """Feed ``(B, N, D)`` tokens one at a time through :meth:`step`, from ``state``
        (a fresh one if ``None``). Returns ``(outputs (B, N, D), state)``.

        The sequential reference every parallel form is tested against, and the decoding
        loop of the models. ``check_values=False`` skips the scans that read tensor values
        (NaN/Inf, mask values; a host sync on an accelerator), for callers that checked
        their input once already (generation, token after token).
        """
        self._require_recurrent()
        self._check_x(x, scan=check_values)
        if attention_mask is not None and check_values:  # step itself does not scan values
            self._check_mask(attention_mask, x.shape[0], x.shape[1], x.device)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        outs = []
        for t in range(x.shape[1]):
            m_t = None if attention_mask is None else attention_mask[:, t]
            y_t, state = self.step(x[:, t], state, attention_mask=m_t)
            outs.append(y_t)
        y = torch.stack(outs, 1) if outs else x * 0.0
        return y, state

    def prefill(self, x: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Any]:
        """Run a prompt ``(B, N, D)`` and return ``(outputs (B, N, D), state)``.

        The outputs equal ``forward``'s, and stepping on from the state equals running the
        longer sequence; padded positions give zero outputs and are skipped, as by ``step``.
        Checks the input here, then runs :meth:`_parallel_prefill` where a mixer has one,
        else steps through the tokens.
        """
        self._require_recurrent()
        self._check_x(x)
        b, n, _ = x.shape
        mask = self._check_mask(attention_mask, b, n, x.device)
        if n == 0:
            return x * 0.0, self.init_state(b, x.device, x.dtype)
        if type(self)._parallel_prefill is Mixer._parallel_prefill:
            return self.step_through(x, attention_mask=mask)
        y, state = self._parallel_prefill(x, mask)
        if mask is not None:
            y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
        return y, state

    def _parallel_prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Any]:
        """Parallel form of :meth:`prefill` on checked input (``N > 0``; ``mask`` as in
        ``_forward``). Mixers with a parallel prompt pass override this."""
        raise NotImplementedError

    def _init_state(self, batch_size: int, device, dtype) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _select_state(self, keep: Tensor, new: Any, old: Any) -> Any:
        """Per sequence, take ``new`` where ``keep`` else ``old`` (states of fixed shape).

        Mixers whose state grows (KV caches) override this.
        """
        if isinstance(new, Tensor):
            k = keep.view(-1, *([1] * (new.dim() - 1)))
            return torch.where(k, new, old)
        if isinstance(new, dict):
            return {key: self._select_state(keep, new[key], old[key]) for key in new}
        if isinstance(new, (tuple, list)):
            items = [self._select_state(keep, a, b) for a, b in zip(new, old)]
            return type(new)(*items) if hasattr(new, "_fields") else type(new)(items)
        return new

    def _upgrade_state_dict(self, state_dict, prefix: str) -> None:
        """Bring an older checkpoint's entries up to date, in place, before loading: map the
        old key prefixes of ``renamed_parameters`` to the new ones. Building blocks that add
        state extend this (calling ``super()``)."""
        for old, new in self.renamed_parameters.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before a rename keep loading.
        self._upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}"
