"""Accuracy by expert, with and without retrieval, as a grouped bar chart (PNG, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from asymmetry.atomic import atomic_path


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
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:  # the suffix tells savefig the format
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
