"""The report's plots: validation loss per epoch, BLEU per optimizer (per test set), alpha."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List

from .runs import test_sets


def plots(groups: Dict[str, List[dict]], summary: Dict[str, dict], out: Path,
          title: str = "") -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(name, fig):
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        return name

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, runs in groups.items():
        epochs = sorted({e for r in runs for e in r["valid"]})
        means = [statistics.mean([r["valid"][e]["loss"] for r in runs
                                  if e in r["valid"] and "loss" in r["valid"][e]])
                 for e in epochs]
        if epochs:
            ax.plot(epochs, means, marker="o", label=f"{lab} (n={len(runs)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(save("valid_loss.png", fig))

    labels = list(groups)
    if any(r["multi"] for runs in groups.values() for r in runs):
        written.append(save("bleu.png", bleu_by_test_set(plt, groups)))
    else:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, key, name in zip(axes, ("tokenized_bleu", "sacrebleu"),
                                  ("tokenized BLEU (fairseq)", "sacreBLEU")):
            means = [summary[lab][key][0] or 0.0 for lab in labels]
            stds = [summary[lab][key][1] or 0.0 for lab in labels]
            ax.bar(range(len(labels)), means, yerr=stds, color="#9ecae1", capsize=4)
            for i, lab in enumerate(labels):
                pts = [float(r["bleu"][key]) for r in groups[lab] if r["bleu"]]
                ax.scatter([i] * len(pts), pts, color="black", zorder=3, s=14)
            values = [float(r["bleu"][key]) for runs in groups.values() for r in runs if r["bleu"]]
            if values:  # zoomed: BLEU differences are a fraction of a point
                ax.set_ylim(min(values) - 1.0, max(values) + 0.5)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels)
            ax.set_title(name + " (y axis zoomed)")
            ax.set_ylabel("BLEU")
        written.append(save("bleu.png", fig))

    xsam_runs = [r for runs in groups.values() for r in runs if r["alpha"]]
    if xsam_runs:
        fig, ax = plt.subplots(figsize=(6, 4))
        marked = False
        for r in xsam_runs:
            line, = ax.plot([u for u, _ in r["alpha"]], [a for _, a in r["alpha"]], marker=".",
                            label=r["name"])
            edge = [x for x, pin in zip(r["alpha"], r["alpha_pinned"]) if pin]
            if edge:
                ax.scatter([u for u, _ in edge], [a for _, a in edge], marker="x", s=60,
                           color=line.get_color(), zorder=3,
                           label=None if marked else "pinned at the grid's edge")
                marked = True
        ax.set_xlabel("update")
        ax.set_ylabel("alpha chosen by the search")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save("alpha.png", fig))
    return written


def bleu_by_test_set(plt, groups: Dict[str, List[dict]]):
    """sacreBLEU per test set: bars = mean over seeds, points = seeds."""
    names = test_sets([r for runs in groups.values() for r in runs])
    labels = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = {lab: [float(r["scores"][name]["sacrebleu"]) for r in groups[lab]
                     if name in r["scores"]] for lab in labels}
        means = [statistics.mean(v) if v else 0.0 for v in pts.values()]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in pts.values()]
        ax.bar(range(len(labels)), means, yerr=stds, color="#9ecae1", capsize=4)
        for i, v in enumerate(pts.values()):
            ax.scatter([i] * len(v), v, color="black", zorder=3, s=14)
        values = [x for v in pts.values() for x in v]
        if values:  # zoomed: the differences are a fraction of a point
            ax.set_ylim(min(values) - 1.0, max(values) + 0.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30)
        ax.set_title(f"{name} (y zoomed)", fontsize=9)
        ax.set_ylabel("sacreBLEU")
    return fig
