"""Time to first token per chat turn with and without reusing the KV cache of the last turn (``Chat``,
``sampling/prefix.py``), measured in the same run: two chats on one assistant say the same turns, interleaved turn by
turn (which goes first alternates), greedy, so both have the same history; medians over ``--repeats`` and the ratio
without / with reuse per turn.

A turn's time to first token is its planning (embed, route, retrieve, prompt) plus the prefill (``stats.prefill_s``);
``reused_tokens`` is how much of the prompt came from the cache. With retrieval on, the passages of each turn sit in
the system message, before the history, so only the prompt up to them (the template's opening, the system prompt and
the instruction) can be shared; with retrieval off the whole previous turn is.

    OMP_NUM_THREADS=1 python benchmarks/chat_prefill.py --lineups small,default --retrieval off,on --repeats 2 \\
        --out benchmarks/results/chat_prefill.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TURNS = ["What is photosynthesis?", "Which organisms carry it out?", "Where in the cell does it take place?",
         "What gas does it release?"]
PLANNING = ("embed", "route", "load_expert", "retrieve", "prompt")


def turn_record(answer) -> dict:
    stats, timings = answer.stats, answer.timings
    plan_s = sum(timings.get(k, 0.0) for k in PLANNING)
    return {"prompt_tokens": stats["prompt_tokens"], "reused_tokens": stats.get("reused_tokens", 0),
            "prefill_tokens": stats.get("prefill_tokens", stats["prompt_tokens"]), "prefill_s": stats["prefill_s"],
            "ttft_s": plan_s + stats["prefill_s"], "text": answer.text}


def measure(bot, lineup: str, retrieval: bool, turns: list[str], repeats: int, tokens: int, expert: str) -> dict:
    sampler = {"temperature": 0.0, "max_tokens": tokens}
    runs: dict[str, list[list[dict]]] = {"reuse": [], "plain": []}
    for r in range(repeats):
        chats = {"reuse": bot.chat(expert=expert, retrieval=retrieval, sampler=sampler),
                 "plain": bot.chat(kv_reuse=False, expert=expert, retrieval=retrieval, sampler=sampler)}
        for name in chats:
            runs[name].append([])
        for t, question in enumerate(turns):
            order = ["reuse", "plain"] if (r + t) % 2 == 0 else ["plain", "reuse"]
            for name in order:
                rec = turn_record(chats[name].say(question))
                runs[name][-1].append(rec)
                print(f"{lineup} retrieval={'on' if retrieval else 'off'} round {r + 1} turn {t + 1} {name:5s} "
                      f"prompt {rec['prompt_tokens']:5d} reused {rec['reused_tokens']:5d} "
                      f"prefill {rec['prefill_s']:.2f} s ttft {rec['ttft_s']:.2f} s", flush=True)
    per_turn = []
    for t in range(len(turns)):
        row = {"turn": t + 1}
        for name in ("reuse", "plain"):
            recs = [run[t] for run in runs[name]]
            row[name] = {"prompt_tokens": recs[0]["prompt_tokens"], "reused_tokens": recs[0]["reused_tokens"],
                         "median_prefill_s": statistics.median(x["prefill_s"] for x in recs),
                         "median_ttft_s": statistics.median(x["ttft_s"] for x in recs)}
        row["prefill_ratio_plain_over_reuse"] = row["plain"]["median_prefill_s"] / row["reuse"]["median_prefill_s"]
        row["ttft_ratio_plain_over_reuse"] = row["plain"]["median_ttft_s"] / row["reuse"]["median_ttft_s"]
        row["same_text"] = all(a["text"] == b["text"] for ra, rb in zip(runs["reuse"], runs["plain"])
                               for a, b in [(ra[t], rb[t])])
        per_turn.append(row)
    later = per_turn[1:]
    return {"lineup": lineup, "expert": expert, "retrieval": retrieval, "repeats": repeats, "tokens": tokens,
            "turns": per_turn, "runs": runs,
            "turns_2_on_ttft_ratio": (sum(r["plain"]["median_ttft_s"] for r in later)
                                      / sum(r["reuse"]["median_ttft_s"] for r in later)) if later else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineups", default="small,default")
    ap.add_argument("--retrieval", default="off,on")
    ap.add_argument("--expert", default="science")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from asymmetry import Assistant
    from asymmetry.config import Config
    from asymmetry.experts import ModelPool

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
               "results": []}
    for lineup in args.lineups.split(","):
        bot = Assistant(Config.from_dict({"experts": {"lineup": lineup}}), pool=ModelPool())
        t0 = time.perf_counter()
        bot.ask("Warm up.", expert=args.expert, retrieval=True, sampler={"temperature": 0.0, "max_tokens": 1})
        print(f"{lineup}: loaded and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
        for flag in args.retrieval.split(","):
            res = measure(bot, lineup, flag == "on", TURNS[: args.turns], args.repeats, args.tokens, args.expert)
            results["results"].append(res)
            print(json.dumps({"lineup": lineup, "retrieval": flag, "turns_2_on_ttft_ratio": res["turns_2_on_ttft_ratio"],
                              "turns": [{k: row[k] for k in ("turn", "prefill_ratio_plain_over_reuse",
                                                             "ttft_ratio_plain_over_reuse", "same_text")}
                                        | {"reused": row["reuse"]["reused_tokens"],
                                           "prompt": row["reuse"]["prompt_tokens"]} for row in res["turns"]]},
                             indent=1), flush=True)
            if args.out:
                atomic_write_json(args.out, results)
        del bot


if __name__ == "__main__":
    main()
