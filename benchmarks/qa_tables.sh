#!/usr/bin/env bash
# Free-form QA tables of the README (held-out parts only; see `asymmetry eval qa --help` for the split rule).
# Usage: benchmarks/qa_tables.sh [N] [experts]   (N questions per set, default 30; about 1 minute per question on 2
# cores with the 1.5B baselines). With "experts": the routed default line-up against each of its experts alone
# (--expert NAME) on the same questions, TriviaQA then NQ-open (the routing question of the right-answers issue). Every run writes benchmarks/results/qa/<set>-<system>/report.json; a run whose report is
# there already is kept (delete its folder to run it again); an interrupted one resumes.
# Then: python benchmarks/qa_table.py prints the table.
set -euo pipefail
N=${1:-30}
MODE=${2:-tables}
OUT=benchmarks/results/qa
mkdir -p "$OUT"
SMALL=$(mktemp --suffix=.toml)
printf '[experts]\nlineup = "small"\n' > "$SMALL"
trap 'rm -f "$SMALL"' EXIT

run() {  # run NAME [asymmetry options...] -- [eval qa options...]
  local name=$1; shift
  local pre=()
  while [[ $1 != -- ]]; do pre+=("$1"); shift; done; shift
  if [[ -f $OUT/$name/report.json ]]; then echo "kept $OUT/$name"; return; fi
  local again=()
  [[ -f $OUT/$name/run.json ]] && again=(--resume)
  asymmetry "${pre[@]}" eval qa "${SET}" --limit "$N" --out "$OUT/$name" --no-progress "${again[@]}" "$@"
}

if [[ $MODE == experts ]]; then
  for SET in triviaqa nq_open; do
    for EXPERT in auto general science scholar commonsense; do
      run "$SET-expert-$EXPERT" -- --expert "$EXPERT"
    done
  done
  exit 0
fi

# most informative first: each set's default pipeline (with the plain-transformers greedy baselines on the same
# questions and passages) and the same without retrieval; our 30 common-knowledge questions; then the small line-up
for SET in nq_open triviaqa; do
  run "$SET-default" -- --baseline hf --baseline-bases qwen2.5-coder-1.5b,smollm2
  run "$SET-default-closed" -- --no-retrieval
done
SET=tests/data/common_knowledge.jsonl
run "common-default" -- --baseline hf --baseline-bases qwen2.5-coder-1.5b
for SET in nq_open triviaqa; do
  run "$SET-small" --config "$SMALL" --
  run "$SET-small-closed" --config "$SMALL" -- --no-retrieval
done
