"""Baselines the router is measured against, on the same splits.

* :class:`KeywordBaseline`: per expert, the ``k`` words whose document frequency in that expert's training questions
  most exceeds the others' (smoothed log-odds, words seen at least ``min_df`` times); a question goes to the expert
  with the most keyword hits, ties and no-hit questions to the largest training class. No embedding needed.
* :class:`NearestCentroid`: the expert whose mean training embedding is closest in cosine similarity.

Dimensions: N questions, D embedding size, L labels.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_WORD = re.compile(r"[a-z][a-z'-]+")
STOPWORDS = frozenset(
    ["the", "a", "an", "of", "to", "in", "and", "or", "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "which", "what", "who", "whom", "whose", "when", "where", "why", "how", "for", "on", "at", "by", "with", "from", "as", "into", "than", "then", "there", "their", "they", "them", "he", "she", "his", "her", "him", "i", "you", "we", "our", "your", "not", "no", "do", "does", "did", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "has", "have", "had", "if", "so", "but", "about", "after", "before", "most", "more", "one", "two"]
)


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


class KeywordBaseline:
    def __init__(self, k: int = 50, min_df: int = 5):
        self.k, self.min_df = k, min_df
        self.keywords: dict[str, list[str]] = {}
        self.default = ""

    def fit(self, texts: list[str], labels: list[str]) -> KeywordBaseline:
        per_label: dict[str, Counter] = {}
        sizes = Counter(labels)
        total: Counter = Counter()
        for text, label in zip(texts, labels):
            ws = words(text)
            per_label.setdefault(label, Counter()).update(ws)
            total.update(ws)
        n = len(texts)
        self.keywords = {}
        for label, df in per_label.items():
            n_in, n_out = sizes[label], n - sizes[label]
            scored = []
            for w, c in df.items():
                if total[w] < self.min_df:
                    continue
                other = total[w] - c
                score = math.log((c + 1) / (n_in + 2)) - math.log((other + 1) / (n_out + 2))
                scored.append((score, w))
            scored.sort(reverse=True)
            self.keywords[label] = [w for _, w in scored[: self.k]]
        self.default = sizes.most_common(1)[0][0]
        return self

    def predict(self, texts: list[str]) -> list[str]:
        sets = {label: set(ws) for label, ws in self.keywords.items()}
        out = []
        for text in texts:
            ws = words(text)
            hits = {label: len(ws & kw) for label, kw in sets.items()}
            best = max(hits.values()) if hits else 0
            winners = [label for label, h in hits.items() if h == best]
            out.append(winners[0] if best > 0 and len(winners) == 1 else self.default)
        return out


class NearestCentroid:
    def fit(self, embeddings: np.ndarray, labels: list[str]) -> NearestCentroid:
        self.labels = sorted(set(labels))
        y = np.array(labels)
        c = np.stack([embeddings[y == name].mean(axis=0) for name in self.labels])  # (L, D)
        self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)  # (L, D)
        return self

    def predict(self, embeddings: np.ndarray) -> list[str]:
        sims = np.asarray(embeddings, dtype=np.float32) @ self.centroids.T  # (N, L)
        return [self.labels[i] for i in sims.argmax(axis=1)]
