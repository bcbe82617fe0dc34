"""Time and memory of every mixer against sequence length (same as ``wersa scale``).

    python benchmarks/scale.py --lengths 1k,2k,4k,8k,16k,32k --out results/scale.jsonl
"""

import sys

from wersa.cli import main

if __name__ == "__main__":
    sys.exit(main(["scale", *sys.argv[1:]]))
