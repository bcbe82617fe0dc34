"""Crash-safe files: atomic whole-file writes and resumable training checkpoints.

A file written with :func:`atomic_write_bytes` (or :func:`atomic_torch_save`) is, at
every moment, either absent, the complete previous version or the complete new
one: the data go to a temporary file in the same folder, are flushed and fsync'ed,
renamed over the target with ``os.replace`` and the folder is fsync'ed so the
rename itself survives a power cut.

Training checkpoints (:class:`CheckpointStore`) are ``step-XXXXXXXX.pt`` files in one
folder, each with a ``.sha256`` digest beside it. Loading walks from the newest to
the oldest: a checkpoint that is truncated, corrupt, of another format or of another
run's config is reported and skipped, so a run falls back to the previous one or, if
none is usable, starts afresh. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

FORMAT = "wersa-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ------------------------------------------------------------------ atomic writes
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` durably.

    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, ``os.replace``)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically and durably."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


# ------------------------------------------------------------------ RNG states
def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------ checkpoint store
def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
    print(f"warning: {msg}", file=sys.stderr)


class CheckpointStore:
    """The checkpoints of one training run, in ``folder``.

    ``identity`` is what defines the run (the training config without the fields that
    only say how to run it); a checkpoint whose identity differs is not resumed.
    """

    def __init__(self, folder: str | os.PathLike, identity: dict[str, Any] | None = None, keep: int = 2):
        self.folder = Path(folder)
        self.identity = identity
        self.keep = max(1, int(keep))

    def path(self, step: int) -> Path:
        return self.folder / f"step-{int(step):08d}.pt"

    def steps(self) -> list[int]:
        """Steps of the checkpoint files present, newest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found, reverse=True)

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` (must hold ``step``) as the newest checkpoint, then drop the oldest beyond ``keep``."""
        step = int(state["step"])
        payload = {"format": FORMAT, "version": VERSION, "identity": self.identity, **state}
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        path = self.path(step)
        atomic_write_bytes(path, data)
        atomic_write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")
        for old in self.steps()[self.keep:]:
            for p in (self.path(old), self.path(old).with_name(self.path(old).name + ".sha256")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        return path

    def load(self, step: int) -> dict[str, Any]:
        """The checkpoint of ``step``; raises ``ValueError`` saying why it is unusable."""
        path = self.path(step)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        digest_path = path.with_name(path.name + ".sha256")
        if digest_path.exists():
            want = digest_path.read_text(errors="replace").strip()
            if hashlib.sha256(data).hexdigest() != want:
                raise ValueError(f"{path} does not match its digest ({len(data)} bytes; truncated or corrupt)")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, whatever the reason
            raise ValueError(f"{path} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a wersa training checkpoint")
        if state.get("version") != VERSION:
            raise ValueError(f"{path} has checkpoint version {state.get('version')!r}, expected {VERSION}")
        if int(state.get("step", -1)) != step:
            raise ValueError(f"{path} holds step {state.get('step')!r}, not {step}")
        if self.identity is not None and state.get("identity") != self.identity:
            raise ValueError(f"{path} was written by a run with a different config; not resuming from it")
        return state

    def latest(self) -> dict[str, Any] | None:
        """The newest usable checkpoint, or ``None``; every skipped one is reported as a warning."""
        for step in self.steps():
            try:
                return self.load(step)
            except ValueError as exc:
                _warn(f"skipping checkpoint: {exc}")
        return None
