"""The results store: one JSON object per line, appended atomically, read forgivingly.

Each finished cell appends one line with ``write + flush + fsync``, so a sweep killed
at any moment loses at most the cell in flight; a line cut short by the kill (or
edited by hand into invalid JSON) is reported and skipped when reading, never fatal.
A re-run reads the keys of finished cells and skips them (:func:`cell_key`).

A key covers everything that changes a result: the cell's full config, the run
limits (memory cap, time limit, threads) and the code that ran it
(:func:`code_version`: the package version, a hash of its source files and the
torch version). A record written by other code or under other limits is not
reused: the cell runs again. The hash leaves out the few modules that never run
inside a cell (:data:`RESULT_NEUTRAL`: the command line, the sweep planner, the
presets, the report), so editing a report does not invalidate hours of results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

# Statuses of a cell record. ``ok``, ``oom``, ``timeout`` and ``error`` are final: a
# resumed sweep does not retry them (delete the lines, or pass --retry-failed, to run
# them again). ``killed`` (a signal from outside: not the memory cap, not the time
# limit) says nothing about the cell and is always run again.
STATUSES = ("ok", "oom", "timeout", "error", "killed", "skipped")
NOT_FINAL = ("killed",)

# Modules that choose, order, summarise or print cells but never run inside one: what they
# decide about a cell is in its spec (and so in its key). They are left out of the source
# hash; a test runs a cell and checks that its process imports none of them.
RESULT_NEUTRAL = ("__main__.py", "cli.py", "bench/presets.py", "bench/report.py", "bench/sweep.py")


@functools.lru_cache(maxsize=None)
def code_version() -> dict[str, str]:
    """The code a result was measured with: ``wersa`` version, ``source`` hash, ``torch`` version.

    ``source`` hashes every ``.py`` file of the installed :mod:`wersa` package (names
    and contents) except :data:`RESULT_NEUTRAL`, so it is the same in a clean checkout
    and in an installed wheel, and changes with any uncommitted edit to code a cell runs
    (a git commit would miss those and is absent from an installed package).
    """
    import torch

    import wersa

    return {"wersa": wersa.__version__, "source": source_hash(Path(wersa.__file__).parent, exclude=RESULT_NEUTRAL),
            "torch": torch.__version__}


def source_hash(root: str | os.PathLike, exclude: Iterable[str] = ()) -> str:
    """A 16-hex-digit hash of the names and contents of every ``.py`` file under ``root``.

    ``exclude``: paths relative to ``root`` (``/``-separated) left out.
    """
    root = Path(root)
    skip = set(exclude)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in skip:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cell_key(spec: dict[str, Any], limits: dict[str, Any] | None = None) -> str:
    """A stable 16-hex-digit key of a cell: a hash of everything that changes its result.

    ``spec`` holds mixer, task, length, seed and the full training/model config;
    ``limits`` the run limits (``mem_limit_bytes``, ``timeout_s``, ``threads``): an
    ``oom`` or ``timeout`` under one limit says nothing under another. The code
    version (:func:`code_version`) is always part of the key. Dict order does not
    matter. Paths and other fields that only say where to run must not be in ``spec``.
    """
    payload = {"spec": spec, "limits": limits or {}, "code": code_version()}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_result(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, durably (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    # One os.write of the whole line on an O_APPEND descriptor: concurrent writers
    # (ranks, parallel sweeps) never interleave inside a line.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # A previous writer killed mid-line leaves no newline at the end; start a
        # fresh line so the damage stays confined to that one record.
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path: str | os.PathLike, warn: bool = True) -> list[dict[str, Any]]:
    """All valid records of a results file (missing file = no records).

    Invalid lines (truncated by a kill, not JSON, not an object) are skipped with a
    warning naming the file and line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    bad = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            if not isinstance(rec, dict):
                bad.append(i)
                continue
            out.append(rec)
    if bad and warn:
        msg = (f"{path}: skipped {len(bad)} corrupt line(s) (line {', '.join(map(str, bad[:10]))}"
               f"{', ...' if len(bad) > 10 else ''}); the cells they held will run again")
        warnings.warn(msg, stacklevel=2)
        print(f"warning: {msg}", file=sys.stderr)
    return out


def finished_keys(records: Iterable[dict[str, Any]], retry_failed: bool = False) -> set[str]:
    """Keys of finished cells; with ``retry_failed`` only successful (and skipped) ones count.

    ``killed`` records never count: a signal from outside says nothing about the cell.
    """
    keys = set()
    for rec in records:
        key = rec.get("key")
        if not key or rec.get("status") in NOT_FINAL:
            continue
        if retry_failed and rec.get("status") not in ("ok", "skipped"):
            continue
        keys.add(key)
    return keys


def latest_by_key(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key (the last written), in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        seen[rec.get("key") or id(rec)] = rec
    return list(seen.values())


# ------------------------------------------------------------------ warnings
def cell_warnings(rec: dict[str, Any]) -> list[str]:
    """Why a cell's numbers may not mean what they seem, from its record's fields (empty if none).

    A cell stopped by its time budget trained for fewer steps than configured (its
    accuracy reflects the machine's speed, not the mechanism); a cell that ran with a
    load average above the machine's core count shared its cores with other work
    (its times are inflated, and under a time budget so is its step count).
    """
    out = []
    if rec.get("stopped_by") in ("time", "max_time_s"):  # "max_time_s": records of earlier code
        planned = (rec.get("config") or {}).get("max_steps")
        steps = rec.get("steps")
        of = f" after {steps} of {planned} steps" if steps is not None and planned else ""
        out.append(f"stopped by the time budget{of}")
    cpus = rec.get("cpu_count")
    loads = [x for x in (rec.get("load_start"), rec.get("load_end")) if x is not None]
    if cpus and loads and max(loads) > cpus:
        out.append(f"ran under load {max(loads):.1f} on {cpus} cores")
    return out


def format_warnings(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per record with warnings: ``"<mixer> / <task> / seed <s>: <warning>; <warning>"``.

    For a report or a command-line summary. The warnings are computed from the record
    (:func:`cell_warnings`: the fields a sweep adds, such as ``config``, make them more
    precise), else taken from its ``warnings`` field.
    """
    lines = []
    for rec in records:
        found = cell_warnings(rec) or rec.get("warnings") or []
        if not found:
            continue
        what = [str(rec[k]) for k in ("mixer",) if rec.get(k) is not None]
        task = rec.get("task_label") or rec.get("task")
        if task is not None:
            what.append(str(task))
        elif rec.get("length") is not None:
            what.append(f"N={rec['length']}")
        if rec.get("seed") is not None:
            what.append(f"seed {rec['seed']}")
        lines.append(f"{' / '.join(what) or rec.get('key', 'cell')}: {'; '.join(found)}")
    return lines


def middle_first(values: list) -> list:
    """``values`` with the middle one first, then the rest in order: the order in which a
    learning-rate grid is tried, and the tie-break when two rates validate equally (the
    sweep and the report choose the same rate)."""
    values = list(values)
    mid = len(values) // 2
    return values[mid:mid + 1] + values[:mid] + values[mid + 1:]
