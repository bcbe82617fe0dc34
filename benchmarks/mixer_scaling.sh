#!/usr/bin/env bash
# Forward and forward+backward time and peak memory of every mixer against length,
# each measurement in a fresh process (B=1, 8 heads of 64, fp32, 2 threads).
#   1. every registered mixer, bidirectional and causal forms, 1k..16k tokens;
#   2. wersa and sdpa (the exact reference) up to 64k tokens.
# Results: docs/results/scaling-*.jsonl and their reports (tables + log-log plots).
# Re-running resumes: finished measurements are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
W=".venv/bin/wersa"
common=(--dim 512 --heads 8 --threads 2 --warmup 1 --repeats 2 --mem-limit-gb 16 --timeout 300 --quiet)
others=$(.venv/bin/python -c "import wersa; print(','.join(n for n in wersa.list_mixers() if n != 'linformer'))")
$W scale "${common[@]}" --mixers "$others" --lengths 1k,4k,16k --out docs/results/scaling-bidir.jsonl
# Linformer's projections have a fixed length: build it for the longest one measured.
$W scale "${common[@]}" --mixers linformer --mixer-option max_len=16384 --lengths 1k,4k,16k \
    --out docs/results/scaling-bidir.jsonl
$W scale "${common[@]}" --mixers "$others" --lengths 1k,4k,16k --causal --out docs/results/scaling-causal.jsonl
$W scale "${common[@]}" --mixers wersa,sdpa --lengths 64k --repeats 1 --warmup 0 \
    --out docs/results/scaling-bidir.jsonl
$W scale "${common[@]}" --mixers wersa,sdpa --lengths 64k --repeats 1 --warmup 0 --causal \
    --out docs/results/scaling-causal.jsonl
