"""``asymmetry index build|info``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from asymmetry.config import override
from asymmetry.embedder import EMBED_BACKENDS
from asymmetry.index.build import build_index
from asymmetry.index.config import INDEX_TYPES
from asymmetry.index.manifest import (
    WORK_DIR,
    embed_backend,
    load_manifest,
    quote,
    read_manifest,
    rebuild_command,
    resolve_index_dir,
)


def register(sub) -> None:
    p = sub.add_parser("index", help="build or inspect a FAISS passage index",
                       description="Build a FAISS + BM25 passage index over a Wikipedia corpus, or show one.")
    isub = p.add_subparsers(dest="index_command", metavar="{build,info}")
    b = isub.add_parser(
        "build", help="build (or resume) an index",
        description="Stream a corpus, chunk it into ~100-200-word passages, embed them in resumable shards and write "
        "a FAISS index, a passage store, a BM25 index and a manifest. Rerunning an interrupted build continues from "
        "the last finished shard; a shard that fails its checksum is embedded again.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--corpus", default=None,
                   help="'default' (10,033 Vital Articles leads) or a .xml/.xml.bz2 dump, .jsonl or .parquet file "
                   "(default: index.corpus from the config)")
    b.add_argument("--index-dir", default=None, help="output folder (default: <ASYMMETRY_HOME>/indexes/default)")
    b.add_argument("--index-type", choices=INDEX_TYPES, default=None,
                   help="FAISS index type; auto picks flat under 50k passages, hnsw under 1M, ivfpq above (ivfpq "
                   "keeps PQ codes in memory and re-ranks candidates from vectors.npy on disk) (default: "
                   "index.index_type)")
    b.add_argument("--batch-size", type=int, default=None, help="embedding batch size (default: index.batch_size)")
    b.add_argument("--embed-backend", choices=EMBED_BACKENDS, default=None,
                   help="what embeds the passages: torch, onnx or onnx-int8 (int8 ONNX: ~2.5x the passages/s on CPU; "
                   "recorded in the index, whose queries then need index.embed_backend set to it) (default: "
                   "index.embed_backend)")
    b.add_argument("--shard-size", type=int, default=None, help="passages per resumable shard (default: 4096)")
    b.add_argument("--rebuild", action="store_true",
                   help="replace an existing complete index (it stays usable until the new one is complete)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_ray_options(b, "embed on a Ray cluster: $RAY_ADDRESS when set, else a local Ray (same shards and files as a "
                    "local build; a killed build resumes either way)", "embedding workers")
    b.set_defaults(func=_build)
    i = isub.add_parser("info", help="show an index's manifest",
                        description="Show the manifest of an index folder (model, type, passages, corpus, files).")
    i.add_argument("--index-dir", default=None, help="index folder (default: <ASYMMETRY_HOME>/indexes/default)")
    i.add_argument("--verify", action="store_true", help="also verify every file's SHA-256")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=_info)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def add_ray_options(parser, help_text: str, workers: str) -> None:
    """--ray and --ray-workers (the optional Ray extra: pip install -e '.[ray]')."""
    parser.add_argument("--ray", action="store_true", help=help_text + " (needs pip install -e '.[ray]')")
    parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                        help=f"{workers} on Ray (default: one per GPU of the cluster, else one per CPU)")


def _build(args) -> int:
    cfg = override(args.cfg.index, {"corpus": args.corpus, "index_dir": args.index_dir, "index_type": args.index_type,
                                    "batch_size": args.batch_size, "shard_size": args.shard_size,
                                    "embed_backend": args.embed_backend})
    m = build_index(
        corpus=cfg.corpus,
        index_dir=cfg.index_dir,
        index_type=cfg.index_type,
        embedding_model=cfg.embedding_model,
        batch_size=cfg.batch_size,
        shard_size=cfg.shard_size,
        chunking=cfg.chunking(),
        rebuild=args.rebuild,
        progress=not args.no_progress,
        ray=args.ray,
        ray_workers=args.ray_workers,
        embed_backend=cfg.embed_backend,
    )
    print(f"index ready in {resolve_index_dir(cfg.index_dir)}: {m.passage_count} passages from "
          f"{m.article_count} articles, {m.index_type} {json.dumps(m.index_params)}, {m.embedding_model}")
    return 0


def _info(args) -> int:
    root = resolve_index_dir(args.index_dir or args.cfg.index.index_dir)
    m = load_manifest(root, verify=True) if args.verify else read_manifest(root)
    if m is None:
        shards = sorted((root / WORK_DIR).glob("shard-*.jsonl")) if (root / WORK_DIR).is_dir() else []
        state = f"; a build is in progress or was interrupted ({len(shards)} shards finished)" if shards else ""
        fix = (rebuild_command(root).removesuffix(" --rebuild") if shards
               else f"asymmetry index build --index-dir {quote(root)}")
        print(f"{root}: no complete index{state}. Build it with: {fix}")
        return 1
    if args.json:
        print(json.dumps(asdict(m), indent=2, ensure_ascii=False))
        return 0
    size = sum(f["bytes"] for f in m.files.values())
    print(f"index:      {root}")
    print(f"type:       {m.index_type} {json.dumps(m.index_params)}")
    print(f"passages:   {m.passage_count} from {m.article_count} articles")
    print(f"corpus:     {m.corpus.get('source')} ({m.corpus.get('reader')}, sha256 {m.corpus.get('sha256', '')[:12]})")
    print(f"embedding:  {m.embedding_model} (dim {m.embedding_dim}, {embed_backend(m)} backend)")
    print(f"lexical:    {m.lexical.get('library')} ({m.lexical.get('method')}, stemmer {m.lexical.get('stemmer')})")
    print(f"chunking:   {json.dumps(m.chunking)}")
    print(f"files:      {len(m.files)} files, {size / 1e6:.1f} MB" + (" (checksums verified)" if args.verify else ""))
    print(f"format:     v{m.format_version}, built {m.created}")
    return 0
