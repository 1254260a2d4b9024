"""Control tokens against fixed samplers on open-ended prompts (issue 17 part 5, second bullet).

Ten prompts of our own (five explanations, five stories, each asking for about 150-200 words), each in the base's
chat template, decoded by our generator for up to ``--max-tokens`` (default 200) tokens with seed ``--seed`` on each
base (default: the default line-up's Qwen2.5-Coder-1.5B at ``--quantize`` and SmolLM2-135M), under

- the fixed settings of ``controls_pareto.py`` (greedy; mirostat 2 with tau 2, 3, 5 after the sampler's default
  temperature 0.7; temperature 0.3 and 0.7), and
- prompt controls written before the request over the sampler's defaults (temperature 0.7): ``<|tau=2|>``,
  ``<|tau=5|>``, ``<|explain|>`` (mirostat 2, tau 4).

Per text (``asymmetry.eval.diversity``): distinct-2, distinct-3, the 4-gram repetition rate (seq-rep-4), the mean
surprise and, per ``stats.segments`` entry with a mirostat target, mean surprise minus tau. ``--out`` (default
``benchmarks/results/controls/open_ended``) gets one ``BASE.jsonl`` per base (one line per prompt and setting,
appended and fsynced: an interrupted run resumes where it stopped), ``open_ended.md`` (means over the prompts) and
``open_ended.json``. The runs of ``controls_pareto.py`` then draw QA accuracy against this diversity.

    python benchmarks/controls_open_ended.py --quantize int8
    python benchmarks/controls_open_ended.py --bases smollm2 --prompts 4 --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asymmetry.atomic import atomic_write_json, atomic_write_text
from asymmetry.config import Config
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.eval.diversity import surprise_gaps, text_metrics
from asymmetry.experts.pool import ModelPool
from asymmetry.integrity import read_jsonl_log
from asymmetry.sampling import Generator, SamplerConfig
from asymmetry.sampling.controls import ControlsConfig, add_control_tokens

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "controls" / "open_ended"

PROMPTS = [
    "Explain in about 150 words how a rainbow forms, for a curious twelve-year-old.",
    "Explain in about 150 words why the sea is salty but rivers are not.",
    "Explain in about 150 words how vaccines teach the immune system to fight a disease.",
    "Explain in about 150 words what inflation is and why a little of it is considered normal.",
    "Explain in about 150 words how a bicycle stays upright when it moves.",
    "Write a short story of about 200 words about a lighthouse keeper who finds a message in a bottle.",
    "Write a short story of about 200 words about a robot that learns to bake bread.",
    "Write a short story of about 200 words about two friends lost in a snowstorm.",
    "Write a short story of about 200 words about a girl who can hear what trees say.",
    "Write a short story of about 200 words about the last day of a small-town summer fair.",
]

#: name -> (sampler fields over SamplerConfig(), control written before the request)
SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "greedy": ({"temperature": 0.0}, ""),
    "tau2": ({"mirostat": 2, "tau": 2.0}, ""),
    "tau3": ({"mirostat": 2, "tau": 3.0}, ""),
    "tau5": ({"mirostat": 2, "tau": 5.0}, ""),
    "temp0.3": ({"temperature": 0.3}, ""),
    "temp0.7": ({"temperature": 0.7}, ""),
    "<|tau=2|>": ({}, "<|tau=2|>"),
    "<|tau=5|>": ({}, "<|tau=5|>"),
    "<|explain|>": ({}, "<|explain|>"),
}
METRICS = ("distinct_2", "distinct_3", "repetition_4", "words")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_log(log: Path) -> list[dict]:
    """The records of a base's log (a half-written last line is cut away)."""
    return read_jsonl_log(log, lambda r: isinstance(r, dict) and "setting" in r,
                          lambda n: AsymmetryError(f"{log} line {n} is damaged: delete the file to start over"))


def load_base(pool: ModelPool, name: str, quantize: str | None):
    """The pooled base ``name`` on the default line-up's placement (``quantize`` pinned for the 1.5B; SmolLM2 as the
    config has it), with the control tokens added; and its linear layer types."""
    config = Config()
    if quantize is not None and name != "smollm2":
        config.experts.quantize = quantize
    placement = Engine(config, pool=pool).experts.placement
    base = pool.base(name, placement)
    add_control_tokens(base.model, base.tokenizer, ControlsConfig().tokens)
    layers = Counter(type(m).__name__ for m in base.model.modules() if "Linear" in type(m).__name__)
    return base, dict(sorted(layers.items())), placement


def run_base(name: str, pool: ModelPool, args, out: Path) -> None:
    log = out / f"{name}.jsonl"
    done = {(r["prompt_id"], r["setting"]) for r in read_log(log)}
    todo = [(i, s) for i in range(args.prompts) for s in SETTINGS if (i, s) not in done]
    if not todo:
        print(f"kept {log}")
        return
    base, layers, placement = load_base(pool, name, args.quantize)
    gen = Generator(base.model, base.tokenizer, lock=base.lock, controls=ControlsConfig())
    commit = git_commit()
    bar = tqdm(todo, desc=f"open-ended {name}", unit="text", disable=args.no_progress, dynamic_ncols=True)
    with open(log, "a", encoding="utf-8") as fh:
        for i, setting in bar:
            fields, control = SETTINGS[setting]
            config = SamplerConfig(max_tokens=args.max_tokens, seed=args.seed, **fields)
            t0 = time.perf_counter()
            g = gen.generate(gen.chat_prompt(control + PROMPTS[i]), config)
            seconds = time.perf_counter() - t0
            rec = {"base": name, "prompt_id": i, "prompt": PROMPTS[i], "setting": setting, "control": control or None,
                   "sampler": fields, "seed": args.seed, "text": g.text, "tokens": g.stats["completion_tokens"],
                   "finish_reason": g.stats["finish_reason"], "mean_surprise_bits": g.stats.get("mean_surprise_bits"),
                   "segments": g.stats["segments"], "gaps": surprise_gaps(g.stats["segments"]),
                   **text_metrics(g.text), "seconds": round(seconds, 3), "layers": layers,
                   "quantize": placement.quantize if name != "smollm2" else "auto", "commit": commit}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(out: Path) -> dict[str, Any]:
    """Means over the prompts per (base, setting), on the prompts done under every setting."""
    rows = []
    for log in sorted(out.glob("*.jsonl")):
        recs = read_log(log)
        have = Counter(r["prompt_id"] for r in recs)  # only prompts every setting answered: the means compare alike
        recs = [r for r in recs if have[r["prompt_id"]] == len(SETTINGS)]
        for setting in SETTINGS:
            mine = [r for r in recs if r["setting"] == setting]
            if not mine:
                continue
            gaps = [g for r in mine for g in r["gaps"]]
            rows.append({"base": log.stem, "setting": setting, "n": len(mine),
                         **{k: _mean(r[k] for r in mine) for k in METRICS},
                         "tokens": _mean(r["tokens"] for r in mine),
                         "mean_surprise_bits": _mean(r["mean_surprise_bits"] for r in mine),
                         "tau": _mean(g["tau"] for g in gaps), "gap": _mean(g["gap"] for g in gaps),
                         "abs_gap": _mean(abs(g["gap"]) for g in gaps),
                         "within_1_bit": _mean(float(abs(g["gap"]) <= 1) for g in gaps) if gaps else None,
                         "looping": sum((r["repetition_4"] or 0) > 0.2 for r in mine),
                         "seconds": _mean(r["seconds"] for r in mine),
                         "precision": sorted({",".join(k for k, v in r["layers"].items() if v) for r in mine})})
    return {"rows": rows}


def fmt(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    head = ("| base | setting | n | distinct-2 | distinct-3 | repetition (4-grams) | texts with repetition > 0.2 | "
            "tokens | mean surprise (bits) | tau | mean surprise − tau | segments within 1 bit | s/text |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary["rows"]:
        lines.append(f"| {r['base']} | `{r['setting']}` | {r['n']} | {fmt(r['distinct_2'])} | {fmt(r['distinct_3'])} | "
                     f"{fmt(r['repetition_4'], 3)} | {r['looping']} | {fmt(r['tokens'], 0)} | "
                     f"{fmt(r['mean_surprise_bits'])} | {fmt(r['tau'], 1)} | {fmt(r['gap'], 2)} | "
                     f"{fmt(r['within_1_bit'])} | {fmt(r['seconds'], 1)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bases", default="qwen2.5-coder-1.5b,smollm2", metavar="A,B")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), metavar="N", help="the first N prompts (default all)")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", choices=("none", "int8", "int4", "auto"),
                   help="weight-only linears of the 1.5B (default: the config's)")
    p.add_argument("--out", default=str(OUT), metavar="DIR")
    p.add_argument("--table", action="store_true", help="only print the table of what is there")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not 1 <= args.prompts <= len(PROMPTS):
        raise AsymmetryError(f"--prompts {args.prompts}: use 1..{len(PROMPTS)}")
    if not args.table:
        out.mkdir(parents=True, exist_ok=True)
        for name in [b.strip() for b in args.bases.split(",") if b.strip()]:
            pool = ModelPool()  # one base at a time in memory
            run_base(name, pool, args, out)
            del pool
    summary = summarise(out)
    summary["settings"] = {k: {"sampler": v[0], "control": v[1] or None} for k, v in SETTINGS.items()}
    summary["prompts"] = PROMPTS
    summary["max_tokens"], summary["seed"] = args.max_tokens, args.seed
    text = table(summary)
    print(text)
    atomic_write_text(out / "open_ended.md", text)
    atomic_write_json(out / "open_ended.json", summary)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except AsymmetryError as exc:  # one line naming the problem and the fix, exit 1
        raise SystemExit(f"error: {exc}") from None
