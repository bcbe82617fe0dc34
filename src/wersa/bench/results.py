"""The results store: one JSON object per line, appended atomically, read forgivingly.

Each finished cell appends one line with ``write + flush + fsync``, so a sweep killed
at any moment loses at most the cell in flight; a line cut short by the kill (or
edited by hand into invalid JSON) is reported and skipped when reading, never fatal.
A re-run reads the keys of finished cells and skips them (:func:`cell_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

# Statuses of a finished cell. All are final: a resumed sweep does not retry them
# (delete the lines, or pass --retry-failed, to run them again).
STATUSES = ("ok", "oom", "timeout", "error", "skipped")


def cell_key(spec: dict[str, Any]) -> str:
    """A stable 16-hex-digit key of a cell: a hash of everything that defines it.

    ``spec`` holds mixer, task, length, seed and the full training/model config;
    keys are sorted so dict order does not matter. Fields that only say how to run
    (``timeout_s``, paths) must not be in ``spec``.
    """
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
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
    """Keys of finished cells; with ``retry_failed`` only successful (and skipped) ones count."""
    keys = set()
    for rec in records:
        key = rec.get("key")
        if not key:
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
