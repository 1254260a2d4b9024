#!/usr/bin/env bash
# Free-form QA tables of the README (held-out parts only; see `asymmetry eval qa --help` for the split rule).
# Usage: benchmarks/qa_tables.sh [N]   (N questions per set, default 30; about 1 minute per question on 2 cores with
# the 1.5B baselines). Every run writes benchmarks/results/qa/<set>-<system>/report.json.
set -euo pipefail
N=${1:-30}
OUT=benchmarks/results/qa
mkdir -p "$OUT"
SMALL=$(mktemp --suffix=.toml)
printf '[experts]\nlineup = "small"\n' > "$SMALL"
for SET in nq_open triviaqa; do
  # the default pipeline, with plain-transformers greedy baselines on the same questions and passages
  asymmetry eval qa "$SET" --limit "$N" --out "$OUT/$SET-default" --overwrite --no-progress \
      --baseline hf --baseline-bases qwen2.5-coder-1.5b,smollm2
  asymmetry eval qa "$SET" --limit "$N" --out "$OUT/$SET-default-closed" --overwrite --no-progress --no-retrieval
  asymmetry --config "$SMALL" eval qa "$SET" --limit "$N" --out "$OUT/$SET-small" --overwrite --no-progress
  asymmetry --config "$SMALL" eval qa "$SET" --limit "$N" --out "$OUT/$SET-small-closed" --overwrite --no-progress \
      --no-retrieval
done
rm -f "$SMALL"
