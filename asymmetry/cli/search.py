"""``asymmetry search``."""

from __future__ import annotations

import argparse
import json

from asymmetry.embedder import Embedder
from asymmetry.errors import AsymmetryError
from asymmetry.index.build import ensure_index
from asymmetry.retrieval.config import MODES
from asymmetry.retrieval.retriever import Retriever


def register(sub) -> None:
    p = sub.add_parser(
        "search", help="retrieve Wikipedia passages for a question",
        description="Print the passages ranked for a question, with title and score. Without --index-dir the "
        "default index (10,033 Vital Articles leads) is built on first use, with a progress bar, and reused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("query", help="the question or keywords")
    p.add_argument("-k", type=int, default=None, help="number of passages (default: retrieval.k, 5)")
    p.add_argument("--mode", choices=MODES, default=None, help="dense, lexical or hybrid (RRF) (default: hybrid)")
    p.add_argument("--index-dir", default=None, help="index folder (default: <ASYMMETRY_HOME>/indexes/default)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {title, text, score, url, id, ...}")
    p.set_defaults(func=_search)


def _search(args) -> int:
    if args.k is not None and args.k < 1:
        raise AsymmetryError(f"invalid -k {args.k}: pass a positive number of passages")
    # one model for a first-use build and for the query
    embedder = Embedder(args.cfg.index.embedding_model, backend=args.cfg.index.embed_backend)
    index_dir = args.index_dir or ensure_index(args.cfg, embedder=embedder)  # --index-dir names a built index
    retriever = Retriever.open(index_dir, config=args.cfg, embedder=embedder)
    passages = retriever.search(args.query, k=args.k, mode=args.mode)
    if args.json:
        out = [{"rank": r, "id": p.id, "title": p.title, "text": p.text, "url": p.url, "score": p.score,
                "metadata": p.metadata} for r, p in enumerate(passages, 1)]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if not passages:
        print("no passages found")
        return 0
    for r, p in enumerate(passages, 1):
        print(f"[{r}] {p.title}  (score {p.score:.4f})  {p.url}")
        print(f"    {p.text}\n")
    return 0
