"""The README's main job in a fresh home, before and after a change: ``asymmetry ask QUESTION`` run twice in a new
``ASYMMETRY_HOME`` (the first run: join the GGUF, cache what the model needs, build the default index; the second: a
later run), for the working tree and for an older commit (``--before``, default ``HEAD``), in the same session with the
order alternating each round. Wall time and peak RSS of each run (``/usr/bin/time -v``), the answer's first line, and
ratios before / after.

The older commit is exported with ``git archive`` into a temporary folder and imported through a small package shim
(``asymmetry/`` of that commit, its subpackage folders linked in, first on ``PYTHONPATH``): both trees run in the same
virtual environment and on the same installed data packages.

    python benchmarks/first_ask.py --before HEAD --rounds 1 --out benchmarks/results/first_ask.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asymmetry.atomic import atomic_write_json

QUESTION = "Who developed the theory of general relativity?"
ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = {"cli": "asymmetry/cli", "index": "index", "retrieval": "retrieval", "router": "router",
               "experts": "experts", "sampling": "sampling", "eval": "eval"}


def export_tree(ref: str, into: Path) -> Path:
    """``ref`` of this repository as an importable ``asymmetry`` package under ``into``; returns the PYTHONPATH."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    shim = into / "shim"
    shutil.copytree(src / "asymmetry", shim / "asymmetry", ignore=shutil.ignore_patterns("cli"))
    for name, folder in SUBPACKAGES.items():
        (shim / "asymmetry" / name).symlink_to(src / folder, target_is_directory=True)
    return shim


def run_ask(home: Path, pythonpath: str | None) -> dict:
    env = {**os.environ, "ASYMMETRY_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "asymmetry", "ask", QUESTION], check=False,
                          env=env, capture_output=True, text=True, cwd=str(home.parent))
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"seconds": round(wall, 1), "peak_rss_gb": round(int(rss.group(1)) / 1e6, 2) if rss else None,
            "rc": proc.returncode, "answer": (proc.stdout.strip().splitlines() or [""])[0][:200],
            "home_gb": round(sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) / 1e9, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="HEAD", help="the commit to compare with (default: HEAD)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-ask-"))
    trees = {"before": str(export_tree(args.before, work / "before")), "after": None}
    runs: dict[str, list] = {name: [] for name in trees}
    try:
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                home = work / f"home-{name}-{r}"
                first, later = run_ask(home, trees[name]), run_ask(home, trees[name])
                runs[name].append({"first": first, "later": later})
                print(f"round {r} {name}: first {first['seconds']} s ({first['peak_rss_gb']} GB), later "
                      f"{later['seconds']} s ({later['peak_rss_gb']} GB), home {later['home_gb']} GB: "
                      f"{first['answer']!r}", flush=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for which in ("first", "later"):
        med = {name: statistics.median(run[which]["seconds"] for run in runs[name]) for name in runs}
        summary[which] = {"before_s": med["before"], "after_s": med["after"],
                          "before_over_after": round(med["before"] / med["after"], 2)}
    print(summary)
    result = {"question": QUESTION, "before": args.before, "rounds": args.rounds, "runs": runs, "summary": summary,
              "load_average": os.getloadavg()}
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
