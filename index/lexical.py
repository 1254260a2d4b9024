"""The lexical side of an index: the one BM25 tokenizer, shared by the index build and by retrieval at query time.

Whatever tokenizes the passages must tokenize the queries the same way; :data:`LEXICAL_SPEC` is recorded in the
manifest (and in the build spec, so a changed tokenizer means a rebuild).
"""

from __future__ import annotations

LEXICAL_SPEC = {"library": "bm25s", "stopwords": "en", "stemmer": "snowball-english", "method": "lucene"}


def bm25_tokenize(texts: list[str], show_progress: bool = False, return_ids: bool = True):
    """Tokenize ``texts`` for bm25s (English stopwords, Snowball stemmer): ids plus vocabulary when ``return_ids``,
    else lists of token strings."""
    import bm25s  # heavy (scipy): only when something is tokenized
    import Stemmer

    return bm25s.tokenize(texts, stopwords=LEXICAL_SPEC["stopwords"], stemmer=Stemmer.Stemmer("english"),
                          show_progress=show_progress, return_ids=return_ids)
