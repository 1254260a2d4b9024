"""``asymmetry expert list|train|train-defaults|compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asymmetry import defaults
from asymmetry.engine import CITE_INSTRUCTION
from asymmetry.eval.compare import COMPARE_SETS, compare_expert
from asymmetry.experts.data import DEFAULT_RECIPES, load_training_file
from asymmetry.experts.registry import ExpertRegistry
from asymmetry.experts.training import AdapterTrainSettings, train_adapter, train_default
from asymmetry.sampling.controls import add_control_tokens


def register(sub) -> None:
    p = sub.add_parser("expert", help="list, train and compare experts (LoRA adapters on shared base models)",
                       description="Experts are LoRA adapters (or bare bases) with their own prompt and sampler "
                       "defaults, configured under [experts]; all experts of one base share one model.")
    esub = p.add_subparsers(dest="expert_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    ls = esub.add_parser("list", help="list the configured experts", description="List the configured experts: "
                         "name, base, adapter (and whether its files are present), retrieval, sampler defaults.")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    tr = esub.add_parser(
        "train", help="train a LoRA adapter for an expert",
        description="Train a LoRA adapter with peft on JSONL chat/instruction data ({'messages': [...]}, "
        "{'instruction','input','output'} or {'prompt','completion'} per line) or on a multiple-choice CSV "
        "(prompt,A,B,C,D[,E],answer). Only the assistant's answer is trained. Checkpoints every N steps; "
        "--resume continues an interrupted run. The adapter is saved with a card (base, data, steps, losses).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tr.add_argument("name", help="expert name (its base and system prompt come from the config if it exists there)")
    tr.add_argument("--data", required=True, type=Path, help=".jsonl chat/instruction file or multiple-choice .csv")
    tr.add_argument("--base", help="base model (default: the expert's base, else smollm2)")
    tr.add_argument("--out", type=Path, help="adapter folder (default: [experts] adapters_dir or $ASYMMETRY_HOME"
                    "/adapters, plus /NAME)")
    tr.add_argument("--system-prompt", help="system prompt prepended to every example (default: the expert's)")
    tr.add_argument("--style", choices=("cloze", "lettered"), default="cloze",
                    help="how a multiple-choice CSV becomes chat: option text as answer, or lettered options")
    tr.add_argument("--epochs", type=int, default=1)
    tr.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    tr.add_argument("--rank", type=int, default=8, help="LoRA rank")
    tr.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    tr.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    tr.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW, linear warm-up and decay)")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--max-length", type=int, default=192, help="tokens per example (prompt cut from the left)")
    tr.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj", help="comma-separated modules")
    tr.add_argument("--top-layers", type=int, help="put LoRA only on the last N decoder layers (cheaper)")
    tr.add_argument("--eval-size", type=int, default=64, help="held-out examples for the eval loss")
    tr.add_argument("--checkpoint-every", type=int, default=50, help="save a resumable checkpoint every N steps")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    tr.add_argument("--controls", action="store_true",
                    help="train an expert that emits control tokens: add the [controls] vocabulary's tokens to the "
                    "base and train their embedding rows too (the answers in --data hold tokens like <|recall|>; "
                    "experts/annotate.py marks grounded answers); loading the expert gives its base the same rows")
    tr.add_argument("--skip-bad-lines", action="store_true",
                    help="skip malformed lines/rows (reported) instead of stopping")
    tr.set_defaults(func=cmd_train)

    td = esub.add_parser(
        "train-defaults", help="reproduce the default experts' adapters from the shipped question sets",
        description="Train the default experts' adapters (commonsense: SmolLM2, in the small line-up; science: "
        "SmolLM2, and scholar: Qwen2.5-Coder-0.5B, committed but out of the line-up, since neither beat its bare "
        "base by two paired standard errors on its held-out questions) "
        "from ARC/OpenBookQA/SciQ, CommonsenseQA/SocialIQA/HellaSwag and MMLU train/validation data, with "
        "the fixed settings in experts/data.py DEFAULT_RECIPES; and grounded (SmolLM2), grounded-qwen and "
        "grounded-qwen-retrieved (Qwen2.5-Coder-0.5B), which emit control tokens, from SciQ support and SQuAD tune "
        "paragraphs (grounded-qwen-retrieved also from NQ-open/TriviaQA tune questions with the passages the default "
        "pipeline retrieves for them), answers annotated recall/explain. Resumable.",
    )
    td.add_argument("names", nargs="*", default=["science", "commonsense"],
                    help="experts to train (default: the SmolLM2 ones, science and commonsense)")
    td.add_argument("--out", type=Path, help="folder for the adapters (default: experts/adapters in the source)")
    td.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    td.set_defaults(func=cmd_train_defaults)

    cp = esub.add_parser(
        "compare", help="score an expert against its bare base on its domain's held-out questions",
        description="Option log-likelihood, expert and bare base scored in the same batches (peft per-row "
        "adapters), on the held-out parts of the expert's domain (default: test splits where a set ships labels - "
        "ARC, OpenBookQA, MMLU - else validation or its evaluation half, never trained or tuned on) or on the "
        "recipe's validation sets (--sets validation). Prints accuracy and mean gold-option probability per "
        "dataset, the paired comparison (mean per-question gain in gold-option probability with its standard "
        "error, questions only the expert / only the base gets right) and, for cloze experts, the base in eval mc's "
        "plain format too: the expert against the better base format, paired accuracy gain +- standard error, "
        "'yes' when it is at least two standard errors.",
    )
    cp.add_argument("name", help="an expert with an adapter")
    cp.add_argument("--dataset", action="append", metavar="NAME[:SPLIT]",
                    help="dataset (split default validation); repeatable; default: the expert's recipe")
    cp.add_argument("--limit", type=int, default=100, help="questions per dataset (seeded random subset; 0 = all)")
    cp.add_argument("--style", choices=("cloze", "lettered"), help="default: the expert's training style")
    cp.add_argument("--sets", choices=COMPARE_SETS, default="heldout",
                    help="the expert's held-out sets (default) or its recipe's validation sets; --dataset overrides")
    cp.add_argument("--json", action="store_true", help="print JSON rows")
    cp.set_defaults(func=cmd_compare)


def _registry(args):
    return ExpertRegistry.from_config(args.cfg.experts)


def cmd_list(args) -> int:
    rows = _registry(args).describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="experts")
    for col in ("name", "base", "adapter", "retrieval", "sampler", "description"):
        table.add_column(col)
    for r in rows:
        adapter = "-" if r["adapter"] is None else f"{Path(r['adapter']).name} ({r['adapter_status']})"
        name = r["name"] + (" *" if r["default"] else "")
        table.add_row(name, r["base"], adapter, f"k={r['k']}" if r["retrieval"] else "off",
                      json.dumps(r["sampler"]), r["description"])
    Console().print(table)
    return 0


def cmd_train(args) -> int:
    registry = _registry(args)
    known = registry.get(args.name) if args.name in registry else None
    base = args.base or (known.base if known else "smollm2")
    system_prompt = args.system_prompt if args.system_prompt is not None else (known.system_prompt if known else None)
    report = load_training_file(args.data, on_error="skip" if args.skip_bad_lines else "stop", style=args.style)
    for lineno, why in report.bad_lines:
        print(f"skipped {args.data}:{lineno}: {why}")
    settings = AdapterTrainSettings(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, lr=args.lr, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, max_length=args.max_length, eval_size=args.eval_size,
        checkpoint_every=args.checkpoint_every, seed=args.seed, top_layers=args.top_layers,
        target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
    )
    root = Path(args.cfg.experts.adapters_dir) if args.cfg.experts.adapters_dir else defaults.home() / "adapters"
    out = args.out or root / args.name
    result = train_adapter(args.name, report.examples, out, base=base, system_prompt=system_prompt,
                           settings=settings, data_description=str(args.data), resume=args.resume,
                           **(_control_args(args) if args.controls else {}))
    print(f"saved adapter {result.adapter_dir} ({result.steps} steps, train loss {result.train_loss:.4f}, "
          f"eval loss {result.eval_loss_before} -> {result.eval_loss})")
    if not known or known.adapter is None or Path(known.adapter) != out:
        print(f"use it: add to the config [[experts.experts]] name = \"{args.name}\", base = \"{base}\", "
              f"adapter = \"{out}\"")
    return 0


def _control_args(args) -> dict:
    """What training an expert that emits control tokens needs: the vocabulary and how tokens are added."""
    vocab = args.cfg.controls  # an empty vocabulary ([controls] enabled = false) is refused by train_adapter
    return {"control_tokens": {c.name: c.token for c in vocab.controls}, "add_tokens": add_control_tokens}


def cmd_train_defaults(args) -> int:
    for name in args.names:
        extra = ({**_control_args(args), "instruction": CITE_INSTRUCTION}
                 if DEFAULT_RECIPES.get(name, {}).get("controls") else {})
        r = train_default(name, args.out, resume=args.resume, **extra)
        print(f"{name}: {r.adapter_dir} ({r.steps} steps, {r.seconds:.0f} s, train loss {r.train_loss:.4f}, "
              f"eval loss {r.eval_loss_before} -> {r.eval_loss})")
    return 0


def cmd_compare(args) -> int:
    datasets = None
    if args.dataset:
        datasets = [tuple(d.split(":", 1)) if ":" in d else (d, "validation") for d in args.dataset]
    rows = compare_expert(_registry(args), args.name, datasets=datasets, limit=args.limit or None, style=args.style,
                          sets=args.sets, eval_config=args.cfg.eval)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'dataset':<16} {'split':<16} {'n':>5} {'base acc':>9} {'expert acc':>10} {'base p(gold)':>12} "
          f"{'expert p(gold)':>14} {'gain ± se':>15} {'only exp/base right':>19} {'base plain':>10} "
          f"{'vs best base ± se':>18} {'beats':>5}")
    for r in rows:
        gain = f"{r['gold_prob_gain']:+.3f} ± {r['gold_prob_gain_se']:.3f}"
        flips = f"{r['only_expert_right']}/{r['only_base_right']}"
        print(f"{r['dataset']:<16} {r['split']:<16} {r['n']:>5} {r['base_accuracy']:>9.3f} {r['expert_accuracy']:>10.3f} "
              f"{r['base_gold_prob']:>12.3f} {r['expert_gold_prob']:>14.3f} {gain:>15} {flips:>19}", end="")
        if "gain_vs_best" in r:
            vs = f"{r['gain_vs_best']:+.3f} ± {r['gain_vs_best_se']:.3f}"
            print(f" {r['base_plain_accuracy']:>10.3f} {vs:>18} {'yes' if r['beats_best_base'] else 'no':>5}", end="")
        print()
    return 0
