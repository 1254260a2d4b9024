"""Write ``index/data/default-vectors.npz``: the default corpus's passage vectors, taken from a finished index.

Usage: ``python tools/make_prebuilt_vectors.py [INDEX_DIR]`` (default: the default index in ``$ASYMMETRY_HOME``, built
by ``asymmetry index build`` with the default corpus, chunking and embedding model, so that its ``.build/`` shards are
there). The passages are chunked again from the corpus, in build order, and paired with the shards' vector rows; a few
are embedded afresh to check the pairing before the table is written (see ``asymmetry.index.prebuilt``).
"""

from __future__ import annotations

import sys

import numpy as np

from asymmetry.embedder import Embedder
from asymmetry.index import manifest as mf
from asymmetry.index.chunking import ChunkingConfig, chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.prebuilt import DEFAULT_FILE, write_table


def main() -> None:
    root = mf.resolve_index_dir(sys.argv[1] if len(sys.argv) > 1 else None)
    shards = sorted((root / ".build").glob("shard-*.npy"))
    if not shards:
        sys.exit(f"{root / '.build'} holds no embedding shards: build the default index there first")
    vectors = np.concatenate([np.load(f) for f in shards])  # (N, D)
    source = open_corpus("default")
    texts = [c.indexed_text for c in chunk_articles(iter(source), ChunkingConfig())]
    if len(texts) != len(vectors):
        sys.exit(f"{root} holds {len(vectors)} shard vectors but the default corpus chunks into {len(texts)} passages: "
                 "build the default index with the default settings first (asymmetry index build)")
    embedder = Embedder()
    picks = np.linspace(0, len(texts) - 1, 8).astype(int)
    fresh = embedder.encode([texts[i] for i in picks])  # (8, D)
    agreement = (fresh * vectors[picks]).sum(axis=1).min()
    if agreement < 0.9999:
        sys.exit(f"the index's vectors do not pair with the re-chunked passages (cosine {agreement:.5f})")
    desc = source.describe()
    write_table(DEFAULT_FILE, texts, vectors, embedder, {k: desc[k] for k in ("source", "bytes", "sha256")})
    print(f"wrote {DEFAULT_FILE} ({DEFAULT_FILE.stat().st_size / 1e6:.1f} MB, {len(texts)} passages)")


if __name__ == "__main__":
    main()
