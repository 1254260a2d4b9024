"""Router evaluation on held-out questions: accuracy, per-expert precision/recall, confusion matrix, calibration.

The primary metric is ``accuracy`` of the top label (before the fallback). Also reported: macro F1, expected
calibration error (ECE, 15 equal-width confidence bins), negative log-likelihood, the fallback rate at the router's
threshold and the accuracy of the questions that are not sent to the fallback.

Dimensions: N questions, L labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asymmetry.errors import AsymmetryError

PRIMARY_METRIC = "accuracy"


@dataclass
class RouterReport:
    metrics: dict[str, float]
    labels: list[str]
    confusion: np.ndarray  # (L, L): rows = true label, columns = predicted label
    primary_metric: str = PRIMARY_METRIC

    def to_dict(self) -> dict:
        return {"primary_metric": self.primary_metric, "metrics": self.metrics, "labels": self.labels,
                "confusion": self.confusion.tolist()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Σ_b |B|/N · |accuracy(B) − mean confidence(B)| over equal-width confidence bins; (N,), (N,)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (N,)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, macro F1, per-label precision/recall and the (L, L) confusion matrix for hard predictions."""
    if len(y_true) != len(y_pred) or not y_true:
        raise AsymmetryError(f"need as many predictions as labels (got {len(y_pred)} and {len(y_true)}), at least one")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(y_true) - set(index))
    if unknown:
        raise AsymmetryError(f"held-out labels {unknown} are not router labels {labels}: retrain the router for them")
    conf = np.zeros((len(labels), len(labels)), dtype=np.int64)  # (L, L)
    for t, p in zip(y_true, y_pred):
        conf[index[t], index[p]] += 1
    tp = np.diag(conf).astype(np.float64)  # (L,)
    predicted = conf.sum(axis=0)  # (L,)
    actual = conf.sum(axis=1)  # (L,)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    metrics = {"accuracy": float(tp.sum() / conf.sum()), "macro_f1": float(f1[actual > 0].mean())}
    for i, name in enumerate(labels):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
    return metrics, conf


def evaluate(router, embeddings: np.ndarray, y_true: list[str]) -> RouterReport:
    """Evaluate ``router`` on held-out (N, D) embeddings with their expert labels."""
    probs = router.predict_proba(embeddings)  # (N, L)
    top = probs.argmax(axis=1)  # (N,)
    y_pred = [router.labels[i] for i in top]
    metrics, conf = classification_metrics(list(y_true), y_pred, router.labels)
    confidence = probs.max(axis=1)  # (N,)
    correct = np.array([t == p for t, p in zip(y_true, y_pred)])
    truth = np.array([router.labels.index(t) for t in y_true])
    routed = confidence >= router.threshold
    metrics.update(
        ece=expected_calibration_error(confidence, correct),
        nll=float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)).mean()),
        fallback_rate=float(1.0 - routed.mean()),
        accuracy_routed=float(correct[routed].mean()) if routed.any() else 0.0,
        n=float(len(y_true)),
    )
    return RouterReport(metrics=metrics, labels=list(router.labels), confusion=conf)
