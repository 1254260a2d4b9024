"""Control-steered decoding against fixed samplers on the free-form QA sets (issue 17 part 5; issue 14's choice of the
default decoding for factual questions).

Runs ``eval qa`` (the Python API, one model pool shared by every system) for each named *system* on each named set,
one results folder per (set, system) under ``--out`` (default ``benchmarks/results/controls``): a folder whose
report holds ``--limit`` questions is kept, a shorter or interrupted one is resumed (``eval qa --resume``), so a run
with ``--limit 15`` and then ``--limit 30`` extends the same folders. Then it prints the table (contains, exact match,
token F1, grounding, mean answer length, seconds per question, n, and the paired difference in contains against
``--reference`` with its standard error) and writes ``table.md``, ``summary.json`` and ``front.png`` (contains
against the diversity of the answers: distinct-2 over all a system's answers, one panel per set, the Pareto front
drawn).

A system is ``NAME=ARGS``; ARGS are ``eval qa`` options, parsed like a command line:

- every sampler flag (``--mirostat 2 --tau 3 --temperature 0.7 --seed 1`` ...), set over ``[eval] qa_sampler`` and
  the experts' own defaults (the default line-up's experts decode greedily: ``temperature = 0``, so a sampled
  system must set ``--temperature``);
- ``--expert auto|base|NAME``, ``--no-retrieval``;
- ``--prefix TEXT``: written before every question (a prompt control such as ``<|recall|>``; the router and the
  retriever read the question without it);
- ``--config FILE`` and ``--set SECTION.KEY=VALUE`` (a TOML value, repeatable): config over the script's
  ``--config`` (e.g. ``--set controls.generate=true`` for an expert trained to emit control tokens).

Built-in systems (``--list`` prints them): greedy; mirostat 2 with tau 2, 3, 5 and temperature 0.3, 0.7 (the
mirostat ones after the sampler's default temperature 0.7, as in the README's mirostat table); ``recall``: the
prompt control ``<|recall|>`` before the question over temperature 0.7 (the control sets mirostat 2, tau 1.5). A
sampled system without ``--seed`` gets ``--seed`` of the script (default 0), so every run is reproducible.

Every folder gets ``system.json``: the system's arguments, the git commit, the config's ``quantize`` and the layer
types of each loaded base (``Int8Linear``/``Int4Linear``/``Linear``): the precision the answers were decoded in.
A resumed folder whose precision differs is refused (one comparison, one precision): pin ``--quantize``.

    python benchmarks/controls_pareto.py --sets triviaqa,squad --part tune --limit 30 --quantize int8
    python benchmarks/controls_pareto.py --only greedy,tau3 --system 'mine=--expert scholar --temperature 0.3'
    python benchmarks/controls_pareto.py --table      # the table and plot of what is there, nothing run
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asymmetry.atomic import atomic_write_json, atomic_write_text
from asymmetry.cli.eval import sampler_overrides
from asymmetry.config import Config
from asymmetry.datasets import QA_DATASETS, QA_PARTS, load_qa
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.eval import qa as eval_qa
from asymmetry.eval.diversity import distinct_n
from asymmetry.eval.plot import save_figure
from asymmetry.eval.qa import OUTPUTS, PREDICTIONS, REPORT, RUN_FILE, load_predictions, run_qa
from asymmetry.experts.pool import ModelPool
from asymmetry.sampling.cli import add_sampler_arguments
from asymmetry.sampling.config import SamplerConfig
from asymmetry.sampling.prefix import PromptCache

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "controls"
SYSTEM_FILE = "system.json"

# run_qa reads the named set's part on every call (1-2 s for TriviaQA); this script calls it once per question and
# system (to interleave the systems), so the parts are read once per process.
eval_qa.open_input = functools.lru_cache(maxsize=None)(eval_qa.open_input)

#: The fixed settings of issue 17 part 5 and a prompt-steered system, name -> eval qa arguments.
BUILTIN_SYSTEMS: dict[str, str] = {
    "greedy": "--temperature 0",
    "tau2": "--mirostat 2 --tau 2 --temperature 0.7",
    "tau3": "--mirostat 2 --tau 3 --temperature 0.7",
    "tau5": "--mirostat 2 --tau 5 --temperature 0.7",
    "temp0.3": "--temperature 0.3",
    "temp0.7": "--temperature 0.7",
    "recall": "--prefix '<|recall|>' --temperature 0.7",
}


# -- systems -----------------------------------------------------------------------------------------------------------


def system_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="system", add_help=False, exit_on_error=False)
    p.add_argument("--expert", default=None)
    p.add_argument("--no-retrieval", action="store_true")
    p.add_argument("--prefix", default="")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], dest="sets")
    add_sampler_arguments(p)
    return p


@dataclass
class System:
    name: str
    args: str
    expert: str | None = None
    retrieval: bool = True
    prefix: str = ""
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return not SamplerConfig().replace(**{"temperature": 0.7, **self.sampler}).is_greedy

    def config_key(self) -> tuple:
        return self.config_file, tuple(self.sets)


def parse_system(spec: str) -> System:
    """``NAME=ARGS`` (or a built-in NAME) into a :class:`System`; a bad name or flag is an error naming it."""
    name, sep, args = spec.partition("=")
    name = name.strip()
    if not sep:
        if name not in BUILTIN_SYSTEMS:
            raise AsymmetryError(f"system {spec!r} has no arguments and is not built in ({', '.join(BUILTIN_SYSTEMS)})"
                                 ": write NAME=ARGS, e.g. 'tau3=--mirostat 2 --tau 3 --temperature 0.7'")
        args = BUILTIN_SYSTEMS[name]
    if not name or any(c in name for c in "/ \t,") or name.startswith("."):
        raise AsymmetryError(f"system name {name!r} cannot name a folder: use letters, digits, '.', '-' or '_'")
    try:
        ns, rest = system_parser().parse_known_args(shlex.split(args))
    except (argparse.ArgumentError, ValueError) as exc:
        raise AsymmetryError(f"system {name}: {exc}: use eval qa's sampler flags, --expert, --no-retrieval, "
                             "--prefix, --config, --set") from None
    if rest:
        raise AsymmetryError(f"system {name}: unknown argument {rest[0]!r}: use eval qa's sampler flags, --expert, "
                             "--no-retrieval, --prefix, --config, --set")
    for item in ns.sets:
        if "=" not in item or "." not in item.partition("=")[0]:
            raise AsymmetryError(f"system {name}: --set {item!r}: write SECTION.KEY=VALUE, e.g. controls.generate=true")
        if item.partition("=")[0].strip() == "experts.quantize":
            raise AsymmetryError(f"system {name}: --set experts.quantize: one comparison runs in one precision; pass "
                                 "--quantize to the script instead")
    return System(name, args, ns.expert, not ns.no_retrieval, ns.prefix, ns.config, list(ns.sets),
                  sampler_overrides(ns, SamplerConfig()))


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string


def system_config(system: System, base_file: str | None, quantize: str | None) -> Config:
    """The config of a system: the script's ``--config`` (or the system's), its ``--set`` items, ``--quantize``."""
    data = Config.load(system.config_file or base_file).to_dict()
    for item in system.sets:
        key, _, raw = item.partition("=")
        *path, last = [k.strip() for k in key.split(".")]
        node = data
        for k in path:
            if not isinstance(node.get(k), dict):
                raise AsymmetryError(f"system {system.name}: --set {key}: {k!r} is not a config section")
            node = node[k]
        node[last] = _toml_value(raw.strip())
    if quantize is not None:
        data["experts"]["quantize"] = quantize
    try:
        return Config.from_dict(data, source=f"system {system.name}")
    except AsymmetryError as exc:
        raise AsymmetryError(f"system {system.name}: {exc}") from None


# -- provenance --------------------------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "experts", "sampling", "asymmetry", "eval",
                                "retrieval", "router"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def layer_types(engine: Engine) -> dict[str, dict[str, int]]:
    """Per base of the line-up, how many linear layers of each type it holds (the precision it decodes in)."""
    out = {}
    for base_name in dict.fromkeys(e.base for e in engine.experts):
        model = engine.pool.base(base_name, engine.experts.placement).loaded.model
        counts = Counter(type(m).__name__ for name, m in model.named_modules()  # the base's own layers: not an
                         if "Linear" in type(m).__name__ and "lora_" not in name  # adapter's LoRA factors nor
                         and not hasattr(m, "base_layer"))  # peft's wrapper (attached before or after a resume)
        out[base_name] = dict(sorted(counts.items()))
    return out


def precision_label(layers: dict[str, dict[str, int]]) -> str:
    labels = []
    for counts in layers.values():
        kinds = [k for k in ("Int4Linear", "Int8Linear") if counts.get(k)]
        labels.append(kinds[0].removesuffix("Linear").lower() if kinds else "float")
    return ",".join(dict.fromkeys(labels)) or "?"


# -- running -----------------------------------------------------------------------------------------------------------


def write_input(set_name: str, part: str, prefix: str, folder: Path) -> str:
    """The named set's part with ``prefix`` before every question, as a JSONL file (same ids, whole part: its hash
    does not depend on --limit)."""
    path = folder / f"{set_name}-{part}-{hashlib.sha1(prefix.encode('utf-8')).hexdigest()[:10]}.jsonl"
    if not path.exists():
        lines = [json.dumps({"id": it.id, "question": prefix + it.question, "answers": list(it.answers),
                             "source": it.source}, ensure_ascii=False) for it in load_qa(set_name, part)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def folder_state(folder: Path, limit: int) -> str:
    """``done`` (a report of ``limit`` questions), ``resume`` (a run was begun) or ``new``."""
    report = folder / REPORT
    if report.is_file() and json.loads(report.read_text(encoding="utf-8")).get("questions") == limit:
        return "done"
    return "resume" if (folder / RUN_FILE).is_file() else "new"


def share_retrieval(engine: Engine, keep: int = 32) -> Engine:
    """``engine`` searching once per question for all the systems that answer it in turn: the passages depend on the
    question (without its controls), the expert and the retrieval settings, never on the sampler, and the search
    (hybrid + cross-encoder rerank over the top 50) costs more than a short answer's decode on 2 busy cores. The
    systems after the first therefore report no ``retrieve`` time."""
    search = engine._retrieve_step
    memo: dict[tuple, list] = {}

    def retrieve(request, question, spec, embedding, timings):
        key = (question, spec.name, request.retrieval, request.raw, request.k, request.retrieval_query)
        if key not in memo:
            while len(memo) >= keep:
                memo.pop(next(iter(memo)))
            memo[key] = search(request, question, spec, embedding, timings)
        return list(memo[key])

    engine._retrieve_step = retrieve
    return engine


class Runner:
    """One model pool (and embedder) for every system, one engine per distinct config, one prompt cache: the systems
    answer each question in turn, so its prompt (passages and question) is prefilled once, not once per system."""

    def __init__(self, config_file: str | None, quantize: str | None, seed: int, inputs: Path, progress: bool):
        self.config_file, self.quantize, self.seed, self.inputs, self.progress = \
            config_file, quantize, seed, inputs, progress
        self.pool = ModelPool()
        self.engines: dict[tuple, Engine] = {}
        self.cache = PromptCache()

    def engine(self, system: System) -> Engine:
        key = system.config_key()
        if key not in self.engines:
            shared = next(iter(self.engines.values()), None)
            self.engines[key] = share_retrieval(Engine(system_config(system, self.config_file, self.quantize),
                                                       pool=self.pool, embedder=shared.embedder if shared else None))
        return self.engines[key]

    def prepare(self, system: System, set_name: str, part: str, limit: int, out: Path) -> dict[str, Any] | None:
        """The folder of (set, system) checked and its ``system.json`` written; None when it is complete."""
        folder = out / f"{set_name}-{system.name}"
        state = folder_state(folder, limit)
        if state == "done":
            print(f"kept {folder}", flush=True)
            return None
        engine = self.engine(system)
        meta = {"system": system.name, "args": system.args, "set": set_name, "part": part,
                "quantize": engine.config.experts.quantize}
        layers = layer_types(engine)
        saved = json.loads((folder / SYSTEM_FILE).read_text(encoding="utf-8")) \
            if state == "resume" and (folder / SYSTEM_FILE).is_file() else {}
        if saved and saved.get("layers") != layers:
            raise AsymmetryError(
                f"cannot resume {folder}: its answers were decoded with {precision_label(saved.get('layers', {}))} "
                f"layers ({saved.get('layers')}), this run loads {precision_label(layers)} ({layers}): pass "
                f"--quantize {saved.get('quantize')} (or delete the folder to start over)")
        meta.update(commits=sorted(set(saved.get("commits", [])) | {git_commit()}), layers=layers,
                    precision=precision_label(layers))
        if state == "new" and folder.is_dir():
            for name in OUTPUTS:  # leftovers of a run that never wrote run.json
                (folder / name).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / SYSTEM_FILE, meta)
        sampler = dict(system.sampler)
        if system.sampled and "seed" not in sampler:
            sampler["seed"] = self.seed
        source = write_input(set_name, part, system.prefix, self.inputs) if system.prefix else set_name
        done = set(load_predictions(folder / PREDICTIONS)) if (folder / PREDICTIONS).is_file() else set()
        print(f"{'resume' if done else 'run'} {set_name} ({part}) {system.name}: {system.args} [{meta['precision']}]"
              f"{f', {len(done)} answered' if done else ''}", flush=True)
        return {"system": system, "folder": folder, "source": source, "sampler": sampler, "done": done,
                "part": None if system.prefix else part}

    def answer(self, job: dict[str, Any], limit: int) -> None:
        """``eval qa`` of the job's system on the first ``limit`` questions (those already answered are kept)."""
        system = job["system"]
        run_qa(job["source"], job["folder"], engine=self.engine(system), part=job["part"], limit=limit,
               retrieval=system.retrieval, expert=system.expert, sampler=job["sampler"], resume=True,
               progress=False, plot=False, prompt_cache=self.cache)

    def run_set(self, systems: list[System], set_name: str, part: str, limit: int, out: Path) -> None:
        jobs = [j for j in (self.prepare(s, set_name, part, limit, out) for s in systems) if j is not None]
        if not jobs:
            return
        items = load_qa(set_name, part)[:limit]
        todo = sum(it.id not in j["done"] for j in jobs for it in items)
        bar = tqdm(total=todo, desc=f"{set_name} ({part})", unit="answer", disable=not self.progress,
                   dynamic_ncols=True)
        for i, item in enumerate(items, 1):
            for job in jobs:  # every system on this question, then the next question: one prefill per question
                if item.id not in job["done"]:
                    self.answer(job, i)
                    bar.update(1)
        bar.close()
        for job in jobs:  # the report of all `limit` questions (nothing left to answer)
            self.answer(job, limit)


# -- the table and the plot --------------------------------------------------------------------------------------------


def paired(a: dict[str, dict], b: dict[str, dict], key: str = "contains") -> tuple[float, float, int] | None:
    """Mean of ``a - b`` per shared question and its standard error (sample std of the differences / sqrt n)."""
    ids = [i for i in a if i in b]
    if len(ids) < 2:
        return None
    diffs = [float(a[i][key]) - float(b[i][key]) for i in ids]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs)), len(diffs)


def collect(out: Path, reference: str) -> list[dict[str, Any]]:
    """One row per (set, system) folder with a report."""
    rows = []
    folders = sorted(p for p in out.iterdir() if (p / REPORT).is_file()) if out.is_dir() else []
    preds = {p.name: load_predictions(p / PREDICTIONS) for p in folders}
    for folder in folders:
        report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        meta = json.loads((folder / SYSTEM_FILE).read_text(encoding="utf-8")) if (folder / SYSTEM_FILE).is_file() \
            else {}
        set_name, system = folder.name.split("-", 1)
        m = report["overall"]
        ref = preds.get(f"{set_name}-{reference}")
        ids = {it for it in preds[folder.name]}
        mine = {i: preds[folder.name][i] for i in ids}
        rows.append({
            "set": set_name, "system": system, "args": meta.get("args", ""), "part": report["settings"].get("part")
            or meta.get("part"), "precision": meta.get("precision", "?"), "commits": meta.get("commits", []),
            "n": int(m["n"]), "contains": m["contains"], "em": m["em"], "f1": m["f1"], "grounding": m["grounding"],
            "length": m["length"], "retrieval_ceiling": m["retrieval_ceiling"],
            "seconds": report["systems"]["asymmetry"]["mean_seconds"],
            "prefill_seconds": _mean([r.get("prefill_s") for r in mine.values()]),
            "reused_tokens": _mean([r.get("reused_tokens") for r in mine.values()]),
            "distinct2": distinct_n([r["answer"] for r in mine.values()], 2),
            "vs_reference": paired(mine, ref) if ref is not None and system != reference else None,
            "vs_reference_f1": paired(mine, ref, "f1") if ref is not None and system != reference else None,
        })
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict[str, Any]], reference: str) -> str:
    head = (f"| set | system | n | contains | EM | F1 | grounding | length (words) | s/question (of which prefill) | distinct-2 of answers "
            f"| Δ contains vs {reference} ± paired SE | precision |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d = r["vs_reference"]
        delta = "—" if d is None else f"{d[0]:+.3f} ± {d[1]:.3f}" + (f" (n={d[2]})" if d[2] != r["n"] else "")
        lines.append(f"| {r['set']} | {r['system']} | {r['n']} | {fmt(r['contains'])} | {fmt(r['em'])} | "
                     f"{fmt(r['f1'])} | {fmt(r['grounding'])} | {fmt(r['length'], 1)} | {fmt(r['seconds'], 1)} "
                     f"({fmt(r['prefill_seconds'], 1)}) | "
                     f"{fmt(r['distinct2'])} | {delta} | {r['precision']} |")
    return "\n".join(lines) + "\n"


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (higher or equal on both axes, higher on one), by x."""
    keep = [i for i, (x, y) in enumerate(points)
            if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(keep, key=lambda i: points[i][0])


def plot_front(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per set: contains against distinct-2 of the answers, each system a labelled point, the front a
    line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.2 * max(1, len(sets)), 4.2), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        mine = [r for r in rows if r["set"] == set_name and r["contains"] is not None and r["distinct2"] is not None]
        n = max((r["n"] for r in mine), default=0)
        short = [r["system"] for r in mine if r["n"] < n]  # not drawn: fewer questions than the others
        mine = [r for r in mine if r["n"] == n]
        pts = [(r["distinct2"], r["contains"]) for r in mine]
        span_x = (max(p[0] for p in pts) - min(p[0] for p in pts)) or 1.0 if pts else 1.0
        span_y = (max(p[1] for p in pts) - min(p[1] for p in pts)) or 1.0 if pts else 1.0
        for i, (r, (x, y)) in enumerate(zip(mine, pts)):
            # labels of points closer than a label's size are stacked
            near = sum(abs(x - x2) < 0.08 * span_x and abs(y - y2) < 0.05 * span_y for x2, y2 in pts[:i])
            ax.scatter(x, y, s=40, marker="*" if "<|" in r["args"] else "o")
            ax.annotate(r["system"], (x, y), textcoords="offset points", xytext=(5, 3 + 10 * near), fontsize=8)
        front = pareto(pts)
        if front:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", marker="s", mfc="none", ms=10,
                    lw=0.8, label="Pareto front")
        ax.set_title(f"{set_name} ({mine[0]['part'] if mine else ''}, n={n})"
                     + (f"\nnot drawn (n < {n}): {', '.join(short)}" if short else ""), fontsize=9)
        ax.set_xlabel("diversity: distinct-2 over all answers")
        ax.set_ylabel("contains (answer alias in the reply)")
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def pooled(out: Path, rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per system, every set together: the paired difference against ``reference`` over the questions both answered
    (contains and F1), with its standard error."""
    by_system: dict[str, dict[tuple, dict]] = {}
    for r in rows:
        recs = load_predictions(out / f"{r['set']}-{r['system']}" / PREDICTIONS)
        by_system.setdefault(r["system"], {}).update({(r["set"], i): rec for i, rec in recs.items()})
    ref = by_system.get(reference, {})
    out_rows = []
    for system, recs in by_system.items():
        if system == reference:
            continue
        c, f = paired(recs, ref), paired(recs, ref, "f1")
        if c is not None:
            out_rows.append({"system": system, "n": c[2], "contains_diff": c[0], "contains_se": c[1],
                             "f1_diff": f[0], "f1_se": f[1],
                             "only_system_right": sum(recs[k]["contains"] > ref[k]["contains"] for k in recs if k in ref),
                             "only_reference_right": sum(recs[k]["contains"] < ref[k]["contains"] for k in recs
                                                         if k in ref)})
    return out_rows


def pooled_table(prows: list[dict[str, Any]], reference: str) -> str:
    lines = [(f"| system | questions (all sets) | Δ contains vs {reference} ± paired SE | right only here / only "
             f"{reference} | Δ F1 ± paired SE |"), "|---|---|---|---|---|"]
    for r in prows:
        lines.append(f"| {r['system']} | {r['n']} | {r['contains_diff']:+.3f} ± {r['contains_se']:.3f} | "
                     f"{r['only_system_right']} / {r['only_reference_right']} | {r['f1_diff']:+.3f} ± {r['f1_se']:.3f} |")
    return "\n".join(lines) + "\n"


def report(out: Path, reference: str) -> None:
    rows = collect(out, reference)
    if not rows:
        print(f"no finished runs in {out}")
        return
    prows = pooled(out, rows, reference)
    text = table(rows, reference) + "\n" + pooled_table(prows, reference)
    print(text)
    atomic_write_text(out / "table.md", text)
    atomic_write_json(out / "summary.json", {"reference": reference, "rows": rows, "pooled": prows})
    print(f"wrote {out / 'table.md'}, summary.json, {plot_front(rows, out / 'front.png').name}")


# -- command line ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", action="append", default=[], metavar="NAME=ARGS",
                   help="a system to run (repeatable): NAME=eval-qa-options, or a built-in name")
    p.add_argument("--only", metavar="A,B", help="built-in systems to run (default: all of them; 'none' for none)")
    p.add_argument("--sets", default="triviaqa,squad", metavar="A,B", help=f"named sets ({', '.join(QA_DATASETS)})")
    p.add_argument("--part", default="tune", choices=QA_PARTS, help="part of each set (default: tune)")
    p.add_argument("--limit", default="30", metavar="N[,N...]",
                   help="questions per set (default 30); steps such as 10,20,30 run every set to 10 questions, then "
                   "extend them all to 20, then 30 (an interrupted run has balanced sets)")
    p.add_argument("--out", default=str(OUT), metavar="DIR", help="results folder (default: %(default)s)")
    p.add_argument("--config", metavar="FILE", help="TOML config every system starts from")
    p.add_argument("--quantize", choices=("none", "int8", "int4", "auto"),
                   help="weight-only linears of the bases for every system (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled systems that set none (default 0)")
    p.add_argument("--reference", default="greedy", help="system the paired differences are taken against")
    p.add_argument("--table", action="store_true", help="only print the table and write the plot")
    p.add_argument("--list", action="store_true", help="print the built-in systems and exit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, spec in BUILTIN_SYSTEMS.items():
            print(f"{name}={spec}")
        return 0
    out = Path(args.out)
    try:
        if not args.table:
            builtin = list(BUILTIN_SYSTEMS) if args.only is None else [
                n.strip() for n in args.only.split(",") if n.strip() and n.strip() != "none"]
            systems = [parse_system(n) for n in builtin] + [parse_system(s) for s in args.system]
            dup = [n for n, c in Counter(s.name for s in systems).items() if c > 1]
            if dup:
                raise AsymmetryError(f"system {dup[0]!r} is given twice: give each system its own name")
            sets = [s.strip() for s in args.sets.split(",") if s.strip()]
            for s in sets:
                if s not in QA_DATASETS:
                    raise AsymmetryError(f"unknown set {s!r}: use named sets ({', '.join(QA_DATASETS)})")
            try:
                steps = sorted({int(x) for x in args.limit.split(",") if x.strip()})
            except ValueError:
                raise AsymmetryError(f"--limit {args.limit!r}: give a number of questions, or steps like 10,20,30") \
                    from None
            if not steps or steps[0] < 2:
                raise AsymmetryError("--limit must be at least 2 (a paired standard error needs two questions)")
            with tempfile.TemporaryDirectory(prefix="controls-inputs-") as inputs:
                runner = Runner(args.config, args.quantize, args.seed, Path(inputs), not args.no_progress)
                for limit in steps:
                    for set_name in sets:  # every system on the first set, then the next set
                        runner.run_set(systems, set_name, args.part, limit, out)
                    report(out, args.reference)
        else:
            report(out, args.reference)
    except AsymmetryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
