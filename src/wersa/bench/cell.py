"""Run one measurement in its own process, so an out-of-memory, a crash or a hang is a result.

Every isolated measurement of the project goes through :func:`run_cell`: benchmark
training cells, ``wersa scale`` cells, per-step cost, ``benchmarks/performance.py``
and ``benchmarks/numerics.py``. A cell names its work as an entry point,
``"package.module:function"`` (or ``"path/to/file.py:function"``), a function taking
the cell's spec (a JSON-able dict) and returning its record (a JSON-able dict).

The parent writes the spec to a file and starts ``python -m wersa.bench.cell SPEC
OUT``; the child caps its address space, calls the entry point and writes the record
to ``OUT``. Whatever happens becomes a record with a ``status``:

* ``ok``      the entry point returned; its fields are in the record;
* ``oom``     the memory cap was hit (an allocation failed: ``MemoryError``, CUDA OOM,
  an allocator error in the child's output);
* ``timeout`` the cell ran past its time limit and the parent killed it;
* ``killed``  a signal from outside (the kernel's out-of-memory killer, a user's
  ``kill``): says nothing about the cell, which runs again on the next sweep;
* ``error``   anything else, with the error message.

Busy machines: OpenMP threads that spin while waiting fight other processes for the
cores (a training step measured 4.5 s with two spinning threads against 0.1 s with
one, on two shared cores). A cell process therefore waits passively by default
(``OMP_WAIT_POLICY=PASSIVE``, set in its environment before torch loads; callers that
run one cell at a time pass ``omp_wait_policy=None`` for the runtime's own) and runs
``threads`` intra-op threads: the number asked for, or else as many as the cores
the load average leaves free (at least one). Each record carries ``threads``,
``cpu_count``, ``load_start`` / ``load_end`` (1-minute load average), ``stopped_by``
(``steps``, ``time`` or ``error``), the run limits, the code version, phase timings
(``startup_s``: interpreter, imports and set-up; ``entry_s``: the entry point) and
``warnings`` (:func:`wersa.bench.results.cell_warnings`).
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
from typing import Any, Callable


# ------------------------------------------------------------------ machine state
def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def auto_threads() -> int:
    """Intra-op threads for a cell: the cores the current load leaves free, at least 1.

    More threads than free cores make every thread wait for the others at each
    parallel region; one thread per free core is the most that helps.
    """
    cpus = available_cpus()
    load = load_average() or 0.0
    return max(1, min(cpus, round(cpus - load)))


def _oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot (``/proc/vmstat``)."""
    try:
        with open("/proc/vmstat") as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------------ entry points
def load_entry(entry: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function named by ``"package.module:function"`` or ``"path/to/file.py:function"``."""
    module, sep, name = entry.rpartition(":")
    if not sep or not module or not name:
        raise ValueError(f"a cell entry point is 'package.module:function' or 'file.py:function', got {entry!r}")
    if module.endswith(".py"):
        import importlib.util

        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load {module!r} (from entry point {entry!r})")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fn = getattr(mod, name, None)
    else:
        from .adapters import import_object

        fn = import_object(entry)
    if not callable(fn):
        raise ValueError(f"entry point {entry!r} is not a function")
    return fn


# ------------------------------------------------------------------ parent side
def _child_env(threads: int, omp_wait_policy: str | None = "PASSIVE") -> dict[str, str]:
    env = dict(os.environ)
    # The child must import the same modules as the parent (stand-ins, plugins).
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # Read once, when the OpenMP runtime loads with torch. ``None``: the runtime's default
    # (libgomp spins a while, then sleeps), unless the caller's environment sets one.
    if omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    env["WERSA_CELL_PARENT"] = str(os.getpid())
    # torchrun variables of a parent launch must not leak into a cell.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _failure(rc: int, tail: str, oom_kills_rose: bool, rss: int | None) -> dict[str, Any]:
    """The record of a child that wrote no result: ``oom`` only when the memory cap caused it."""
    from .memory import _OOM_MARKERS

    last = tail.splitlines()[-1] if tail else ""
    if any(m in tail.lower() for m in _OOM_MARKERS):  # an allocation under the cap failed
        return {"status": "oom", "error": last}
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if rc == -signal.SIGKILL and oom_kills_rose:
            cause = "the kernel's out-of-memory killer (the machine ran out of memory, not the cell's cap)"
        else:
            cause = "a signal from outside (neither the memory cap nor the time limit)"
        at = f" at {rss / 2**20:.0f} MiB resident" if rss else ""
        return {"status": "killed", "error": f"killed by {sig}{at}: {cause}", "signal": sig, "stderr_tail": tail}
    return {"status": "error", "error": f"exit code {rc}: {last}", "stderr_tail": tail}


def run_cell(entry: str, spec: dict[str, Any], *, mem_limit_bytes: int | None = None,
             timeout_s: float | None = None, threads: int | None = None,
             omp_wait_policy: str | None = "PASSIVE") -> dict[str, Any]:
    """Run ``entry(spec)`` in a fresh process; never raises for the cell's failures.

    Args:
        entry: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        spec: the function's one argument (JSON-able).
        mem_limit_bytes: address space the cell may add to the imported interpreter
            (``None`` = no cap).
        timeout_s: wall-clock limit of the whole process (``None`` = none).
        threads: intra-op threads (``None`` = :func:`auto_threads`).
        omp_wait_policy: ``OMP_WAIT_POLICY`` of the child: ``"PASSIVE"`` (default, for a
            shared machine), ``"ACTIVE"``, or ``None`` for the OpenMP runtime's default
            (what a user's process gets: on an idle machine many small parallel regions
            run much faster than under ``PASSIVE``, see docs/performance.md).

    Returns the entry point's record (JSON round-tripped) with the fields the module
    docstring lists; ``wall_s`` is the child's whole life.
    """
    from .results import cell_warnings, code_version

    if omp_wait_policy not in ("PASSIVE", "ACTIVE", None):
        raise ValueError(f"omp_wait_policy must be 'PASSIVE', 'ACTIVE' or None (the OpenMP runtime's default), "
                         f"got {omp_wait_policy!r}")
    threads_source = "requested" if threads else "auto"
    threads = int(threads) if threads else auto_threads()
    run = {"entry": entry, "threads": threads, "threads_source": threads_source, "cpu_count": available_cpus(),
           "omp_wait_policy": omp_wait_policy if omp_wait_policy is not None
           else os.environ.get("OMP_WAIT_POLICY", "default"), "mem_limit_bytes": mem_limit_bytes, "timeout_s": timeout_s,
           "code": code_version(), "load_start": load_average()}
    kills0 = _oom_kills()
    with tempfile.TemporaryDirectory(prefix="wersa-cell-") as tmp:
        spec_path, out_path, err_path = (Path(tmp) / n for n in ("spec.json", "out.json", "stderr.txt"))
        spec_path.write_text(json.dumps({"entry": entry, "spec": spec, "mem_limit_bytes": mem_limit_bytes}))
        cmd = [sys.executable, "-m", "wersa.bench.cell", str(spec_path), str(out_path)]
        t0 = time.perf_counter()
        rss = None
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_child_env(threads, omp_wait_policy),
                                    start_new_session=True)
            timed_out = False
            while True:
                try:
                    rc = proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    rss = _rss_bytes(proc.pid) or rss  # the last resident size seen, for a kill report
                    if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                        timed_out = True
                        try:  # the whole process group: the cell may have started workers
                            os.killpg(proc.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        rc = proc.wait()
                        break
        wall = time.perf_counter() - t0
        run["load_end"] = load_average()
        rec = None
        if timed_out:
            rec = {"status": "timeout", "error": f"ran past the time limit of {timeout_s:g} s"}
        elif out_path.exists():
            try:
                rec = json.loads(out_path.read_text())
            except json.JSONDecodeError:
                rec = None
        if rec is None:
            tail = err_path.read_text(errors="replace")[-2000:].strip()
            kills1 = _oom_kills()
            rec = _failure(rc, tail, kills0 is not None and kills1 is not None and kills1 > kills0, rss)
    rec = {**run, **rec, "wall_s": wall}
    if rec.get("entry_s") is not None:
        rec["startup_s"] = max(0.0, wall - rec["entry_s"])
    if rec.get("stopped_by") not in ("steps", "time"):
        rec["stopped_by"] = "time" if rec["status"] == "timeout" else ("steps" if rec["status"] == "ok" else "error")
    rec["warnings"] = cell_warnings(rec)
    return rec


# ------------------------------------------------------------------ child side
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m wersa.bench.cell SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec_path, out_path = argv
    _die_with_parent()
    if "WERSA_CELL_PARENT" not in os.environ:  # a child started by hand; a parent chose the policy
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    payload = json.loads(Path(spec_path).read_text())
    import resource

    import torch
    import torch._dynamo  # noqa: F401 - the optimisers import it on first use: not under the cell's cap

    from .memory import is_oom, set_memory_cap

    fn = load_entry(payload["entry"])
    # Cap after the imports above (torch's, the entry's module): the budget is what the cell adds.
    set_memory_cap(payload.get("mem_limit_bytes"))
    t0 = time.perf_counter()
    try:
        rec = {"status": "ok", **fn(payload["spec"])}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        if isinstance(exc, KeyboardInterrupt):
            raise
        oom = is_oom(exc)
        rec = {"status": "oom" if oom else "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        if not oom:
            rec["traceback"] = traceback.format_exc()[-3000:]
    rec["entry_s"] = time.perf_counter() - t0
    rec["torch_threads"] = torch.get_num_threads()
    rec["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        text = json.dumps(rec, default=str)
    except MemoryError:
        text = json.dumps({"status": "oom", "error": "MemoryError while writing the result"})
    from .checkpoint import atomic_write_text

    atomic_write_text(out_path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
