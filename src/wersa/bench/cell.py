"""Run one benchmark cell in its own process, so an out-of-memory or a crash is a result.

The parent (:func:`run_isolated`) writes the cell's spec to a file and starts
``python -m wersa.bench.cell SPEC OUT``; the child caps its memory, runs the cell
and writes its record to ``OUT``. Whatever happens (an out-of-memory error, a
crash, the kernel killing it, the time limit) becomes a record with a ``status``:

* ``ok``      the cell finished; its metrics are in the record;
* ``oom``     out of memory (CPU address-space cap, CUDA OOM, or killed by the OS);
* ``timeout`` the cell ran past its time limit and was killed;
* ``error``   anything else, with the error message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

RESULT_STATUSES = ("ok", "oom", "timeout", "error")


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # The child must import the same modules as the parent (stand-ins, plugins).
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env["WERSA_CELL_PARENT"] = str(os.getpid())
    # torchrun variables of a parent launch must not leak into a cell.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def run_isolated(kind: str, spec: dict[str, Any], mem_limit_bytes: int | None = None,
                 timeout_s: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run a ``kind`` (``"train"`` or ``"scale"``) cell in a fresh process; never raises for the cell's failures.

    Returns a dict with ``status`` and, for ``ok``, the cell's metrics; ``wall_s``
    is the child's whole life (start-up, data, training, evaluation).
    """
    with tempfile.TemporaryDirectory(prefix="wersa-cell-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        out_path = Path(tmp) / "out.json"
        err_path = Path(tmp) / "stderr.txt"
        spec_path.write_text(json.dumps({"kind": kind, "spec": spec, "mem_limit_bytes": mem_limit_bytes}))
        cmd = [sys.executable, "-m", "wersa.bench.cell", str(spec_path), str(out_path)]
        t0 = time.perf_counter()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_child_env(threads),
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                try:  # the whole process group: the cell may have started workers
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                rc = proc.wait()
        wall = time.perf_counter() - t0
        if timed_out:
            return {"status": "timeout", "error": f"ran past the time limit of {timeout_s:g} s", "wall_s": wall}
        if out_path.exists():
            try:
                rec = json.loads(out_path.read_text())
                rec["wall_s"] = wall
                return rec
            except json.JSONDecodeError:
                pass
        tail = err_path.read_text(errors="replace")[-2000:].strip()
        if rc in (-signal.SIGKILL, 137):  # the OS out-of-memory killer, most likely
            return {"status": "oom", "error": f"killed by SIGKILL (out of memory?): {tail[-300:]}", "wall_s": wall}
        last = tail.splitlines()[-1] if tail else ""
        from .memory import _OOM_MARKERS

        if any(m in tail.lower() for m in _OOM_MARKERS):
            return {"status": "oom", "error": last, "wall_s": wall}
        return {"status": "error", "error": f"exit code {rc}: {last}", "stderr_tail": tail, "wall_s": wall}


def _die_with_parent() -> None:
    """Linux: end this cell when the sweep that started it dies (a killed sweep leaves no orphan
    cell behind, still writing its checkpoints while the re-run resumes the same cell)."""
    parent = os.environ.get("WERSA_CELL_PARENT")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the line above
        os._exit(1)


def _run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    if kind == "train":
        from .train import TrainConfig, run_training

        return run_training(TrainConfig.from_dict(spec), progress=False)
    if kind == "scale":
        from .scale import measure

        return measure(**spec)
    raise ValueError(f"unknown cell kind {kind!r}; expected 'train' or 'scale'")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m wersa.bench.cell SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec_path, out_path = argv
    _die_with_parent()
    payload = json.loads(Path(spec_path).read_text())
    from .memory import is_oom, set_memory_cap

    # Cap after the imports above (and torch's): the budget is what the cell adds.
    import torch  # noqa: F401

    set_memory_cap(payload.get("mem_limit_bytes"))
    try:
        rec = _run(payload["kind"], payload["spec"])
        rec = {"status": "ok", **rec}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        if isinstance(exc, KeyboardInterrupt):
            raise
        oom = is_oom(exc)
        rec = {"status": "oom" if oom else "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        if not oom:
            rec["traceback"] = traceback.format_exc()[-3000:]
    try:
        text = json.dumps(rec, default=str)
    except MemoryError:
        text = json.dumps({"status": "oom", "error": "MemoryError while writing the result"})
    from .checkpoint import atomic_write_text

    atomic_write_text(out_path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
