"""Router benchmark: routing time beyond the shared embedding, and accuracy against two baselines.

All numbers come from one run on the same held-out split (``router.data``: never a test split):

* accuracy / macro F1 of the router (default: the committed one; ``--router PATH`` for another), of a logistic and an
  MLP head trained in this run, of a keyword baseline (per-expert discriminative words, no embedding) and of a
  nearest-centroid baseline (cosine to each expert's mean training embedding); ratios are against the baselines;
* time per question of ``router.route(embedding)`` (one call per question, as the assistant does), against the
  time to embed one question (the shared cost it rides on) and to run nearest-centroid; the goal is < 1 ms.

    python benchmarks/router_bench.py [--router PATH] [--out results.json]

Embeddings of the training/held-out questions come from the cache that ``asymmetry router train`` fills.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from asymmetry.atomic import atomic_write_json
from asymmetry.embedder import Embedder
from asymmetry.router import DEFAULT_ROUTER_FILE, Router, RouterConfig
from asymmetry.router.baselines import KeywordBaseline, NearestCentroid
from asymmetry.router.data import PARTS, EmbeddingCache
from asymmetry.router.metrics import classification_metrics, evaluate
from asymmetry.router.model import RouterTrainSettings, train
from asymmetry.router.pipeline import load_examples


def _per_call(fn, items, repeat: int) -> float:
    """Median over ``repeat`` passes of the mean seconds per call of ``fn(item)``."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        runs.append((time.perf_counter() - t0) / len(items))
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router", default=str(DEFAULT_ROUTER_FILE), help="router to measure (default: committed)")
    ap.add_argument("--embed-questions", type=int, default=50, help="questions embedded one by one for the baseline")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    cfg = RouterConfig()
    examples = load_examples(cfg)
    embedder = Embedder()
    cache = EmbeddingCache(embedder=embedder)
    x = {part: cache.vectors(examples[part]) for part in PARTS}  # each (N_part, D)
    y = {part: [e.label for e in examples[part]] for part in PARTS}
    heldout_texts = [e.text for e in examples["heldout"]]

    results: dict = {"n": {p: len(y[p]) for p in PARTS}, "accuracy": {}, "macro_f1": {}, "time_ms": {}}
    router = Router.load(args.router, embedder=embedder)
    report = evaluate(router, x["heldout"], y["heldout"])
    results["router"] = {"path": args.router, "ece": report.metrics["ece"], "fallback_rate": report.metrics["fallback_rate"],
                         "accuracy_routed": report.metrics["accuracy_routed"], "confusion": report.confusion.tolist(),
                         "labels": report.labels}
    uncalibrated = evaluate(dataclasses.replace(router, temperature=1.0), x["heldout"], y["heldout"]).metrics
    results["router"].update(ece_temperature_1=uncalibrated["ece"], nll=report.metrics["nll"],
                             nll_temperature_1=uncalibrated["nll"], temperature=router.temperature)
    results["accuracy"]["router"] = report.metrics["accuracy"]
    results["macro_f1"]["router"] = report.metrics["macro_f1"]
    for head in ("logistic", "mlp"):
        settings = RouterTrainSettings(head=head)  # each head's default learning rate
        t0 = time.perf_counter()
        r = train(x["train"], y["train"], x["calibration"], y["calibration"], settings=settings)
        m = evaluate(r, x["heldout"], y["heldout"]).metrics
        results["accuracy"][f"{head} (trained now)"] = m["accuracy"]
        results["macro_f1"][f"{head} (trained now)"] = m["macro_f1"]
        results.setdefault("train_s", {})[head] = time.perf_counter() - t0
        results.setdefault("ece", {})[head] = m["ece"]

    kb = KeywordBaseline().fit([e.text for e in examples["train"]], y["train"])
    km, _ = classification_metrics(y["heldout"], kb.predict(heldout_texts), router.labels)
    nc = NearestCentroid().fit(x["train"], y["train"])
    cm, _ = classification_metrics(y["heldout"], nc.predict(x["heldout"]), router.labels)
    results["accuracy"].update(keyword=km["accuracy"], nearest_centroid=cm["accuracy"])
    results["macro_f1"].update(keyword=km["macro_f1"], nearest_centroid=cm["macro_f1"])

    vectors = list(x["heldout"])  # each (D,)
    router.route(vectors[0])  # warm-up
    route_s = _per_call(router.route, vectors, args.repeat)
    centroid_s = _per_call(lambda v: nc.predict(v[None, :]), vectors, args.repeat)
    embedder.encode([heldout_texts[0]])  # warm-up (loads the model)
    embed_s = _per_call(lambda t: embedder.encode([t]), heldout_texts[: args.embed_questions], 1)
    results["time_ms"] = {"route": route_s * 1e3, "nearest_centroid": centroid_s * 1e3, "embed_one_question": embed_s * 1e3}

    acc = results["accuracy"]
    print(f"held-out questions: {len(y['heldout'])} (train {len(y['train'])}, calibration {len(y['calibration'])})")
    print(f"{'model':<24}{'accuracy':>10}{'macro-F1':>10}")
    for name in acc:
        print(f"{name:<24}{acc[name]:>10.4f}{results['macro_f1'][name]:>10.4f}")
    print(f"router / keyword accuracy:          {acc['router'] / acc['keyword']:.3f}x")
    print(f"router / nearest-centroid accuracy: {acc['router'] / acc['nearest_centroid']:.3f}x")
    rr = results["router"]
    print(f"router calibration: temperature {rr['temperature']:.3f}; ECE {rr['ece']:.4f} (T=1: {rr['ece_temperature_1']:.4f}),"
          f" NLL {rr['nll']:.4f} (T=1: {rr['nll_temperature_1']:.4f})")
    print(f"router ECE {results['router']['ece']:.4f}, fallback rate {results['router']['fallback_rate']:.3f}, "
          f"accuracy of routed {results['router']['accuracy_routed']:.4f}")
    t = results["time_ms"]
    print(f"route(embedding): {t['route'] * 1e3:.1f} us/question (goal < 1000 us: {'met' if t['route'] < 1 else 'MISSED'})")
    print(f"  vs embedding one question {t['embed_one_question']:.2f} ms: routing adds "
          f"{t['route'] / t['embed_one_question'] * 100:.3f}% ({t['embed_one_question'] / t['route']:.0f}x less)")
    print(f"  vs nearest-centroid {t['nearest_centroid'] * 1e3:.1f} us: ratio {t['route'] / t['nearest_centroid']:.2f}x")
    if args.out:
        atomic_write_json(args.out, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
