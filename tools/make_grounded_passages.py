"""Write ``experts/recipes/grounded_retrieved.jsonl.gz``: NQ-open and TriviaQA questions of the ``tune`` part with the
passages the default pipeline retrieves for them, the distant-supervision half of the ``grounded-qwen`` expert's data
(``asymmetry.experts.annotate.retrieved_examples``; issue 14's "training parts with passages retrieved from the
default index", issue 17's matching of training prompts to what the expert sees at run time).

Usage: ``python tools/make_grounded_passages.py [--per-set 400] [--k 2]``. It retrieves as the engine does with the
default config (hybrid search, the cross-encoder reranker and its score floor) from the default index (built on first
use), for the ``tune`` questions of each set after the first ``annotate.QA_MEASURED`` in hash order (those are what
``benchmarks/controls_pareto.py`` measures on; a ``heldout`` question is never read). Shipping the passages keeps
``train-defaults grounded-qwen`` reproducible without an index and keeps ``experts/`` independent of ``retrieval/``.
"""

from __future__ import annotations

import argparse
import gzip
import json

from tqdm import tqdm

from asymmetry.atomic import atomic_write_bytes
from asymmetry.config import Config
from asymmetry.datasets import load_qa
from asymmetry.experts.annotate import QA_MEASURED, RETRIEVED_FILE
from asymmetry.index import ensure_index
from asymmetry.retrieval import Retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-set", type=int, default=400, help="questions per set (default 400)")
    ap.add_argument("--k", type=int, default=2, help="passages per question (default 2, the grounded experts' k)")
    args = ap.parse_args()
    config = Config.load()
    retriever = Retriever.open(ensure_index(config), config=config)
    rows = []
    for source in ("triviaqa", "nq_open"):
        items = load_qa(source, "tune")[QA_MEASURED:QA_MEASURED + args.per_set]
        for item in tqdm(items, desc=f"retrieving {source}", unit="q"):
            hits = retriever.search(item.question, k=args.k, mode=config.retrieval.mode)
            rows.append({"source": source, "id": item.id, "question": item.question, "answers": list(item.answers),
                         "passages": [{"title": p.title, "text": p.text, "score": round(float(p.score), 3)}
                                      for p in hits]})
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    atomic_write_bytes(RETRIEVED_FILE, gzip.compress(data, mtime=0))
    held = sum(any(a.lower() in p["text"].lower() for a in r["answers"] for p in r["passages"]) for r in rows)
    print(f"wrote {len(rows)} questions to {RETRIEVED_FILE} ({held} with an answer string in a passage)")


if __name__ == "__main__":
    main()
