"""Bar charts (PNG, written atomically): MC accuracy by expert with and without retrieval (``eval mc``); QA contains/EM/F1
by expert and by system (``eval qa``)."""

from __future__ import annotations

import os
from pathlib import Path

from asymmetry.atomic import atomic_path


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:  # the suffix tells savefig the format
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_accuracy_by_expert(reports: list[dict], path: str | os.PathLike) -> Path:
    """One bar group per expert, one bar per run (labelled by retrieval on/off, normalisation and CFG scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts = sorted({e for r in reports for e in r.get("per_expert", {})} | {"all"})
    runs = []
    for r in reports:
        s = r.get("settings", {})
        label = f"retrieval {'on' if s.get('retrieval') else 'off'}"
        if s.get("cfg_scale", 1.0) != 1.0:
            label += f", cfg {s['cfg_scale']:g}"
        values = {e: m.get("accuracy", float("nan")) for e, m in r.get("per_expert", {}).items()}
        values["all"] = r.get("accuracy", float("nan"))
        runs.append((label, values))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(experts) * max(1, len(runs)) ** 0.5), 3.6))
    width = 0.8 / max(1, len(runs))
    for j, (label, values) in enumerate(runs):
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(experts))]
        ax.bar(xs, [values.get(e, 0.0) for e in experts], width, label=label)
    ax.set_xticks(range(len(experts)), experts)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by expert")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


QA_METRICS = (("contains", "contains"), ("em", "exact match"), ("f1", "token F1"))


def plot_qa_by_expert(report: dict, path: str | os.PathLike) -> Path:
    """``eval qa``: contains / EM / F1 of our pipeline per expert and overall, then each baseline system overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report.get("systems", {})
    groups: list[tuple[str, dict]] = [(f"{e}\n(n={int(m.get('n') or 0)})", m)
                                      for e, m in report.get("per_expert", {}).items()]
    groups.append(("asymmetry\n(all)", report.get("overall", {})))
    groups += [(name.replace(":", "\n", 1), s.get("overall", {})) for name, s in systems.items() if name != "asymmetry"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups)), 3.8))
    width = 0.8 / len(QA_METRICS)
    for j, (key, label) in enumerate(QA_METRICS):
        xs = [i + (j - (len(QA_METRICS) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [m.get(key) or 0.0 for _, m in groups], width, label=label)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of questions")
    ax.set_title(f"Open-domain QA by expert ({report.get('questions', 0)} questions)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
