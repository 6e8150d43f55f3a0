"""The report's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.api.evaluation import METRICS


def chart_metrics() -> tuple[list[str], list[tuple[str, str]]]:
    """(0–1 metrics for the grouped bar chart, [(metric, panel label)] for their own small panels), in
    the registry's chart order (tuneloop.api.evaluation.METRICS: `chart`, `chart_label`)."""
    drawn = sorted((i for i in METRICS.values() if i.chart is not None), key=lambda i: i.chart or 0)
    return [i.name for i in drawn if i.fraction], [(i.name, i.chart_label or i.label) for i in drawn if not i.fraction]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(progress: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss (every logged step) and validation loss (where measured) against step."""
    train = [(r["step"], r["loss"]) for r in progress if isinstance(r.get("loss"), (int, float))]
    from .inputs import validation_points

    val = validation_points(progress)
    if not train and not val:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.4)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="#d62728", marker="o", linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy, answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


_COLORS = {"base": "#9e9e9e", "majority": "#ff7f0e", "copyPrompt": "#bcbd22", "serving": "#1f77b4", "tuned": "#2ca02c"}


def _series(by_name: dict[str, dict[str, Any]], frac: list[str]) -> list[tuple[str, str, list[float], list[list[float]]]]:
    """(name, colour, values, [lower errors, upper errors]) per model, references first, tuned last."""
    present = [ref for ref in _COLORS if ref != "tuned" and any(
        (ref == "base" and by_name[m].get("base") is not None) or any(s.get("reference") == ref for s in by_name[m].get("references") or [])
        for m in frac)]
    out = []
    for model in [*present, "tuned"]:
        vals, lo, hi = [], [], []
        for m in frac:
            row = by_name[m]
            if model == "tuned":
                v, iv = row.get("tuned"), row.get("tunedInterval")
            else:
                ref = next((s for s in row.get("references") or [] if s.get("reference") == model), None)
                v = (ref or {}).get("value", row.get("base") if model == "base" else None)
                iv = (ref or {}).get("interval")
            v = v or 0.0
            vals.append(v)
            lo.append(max(0.0, v - iv["low"]) if iv else 0.0)
            hi.append(max(0.0, iv["high"] - v) if iv else 0.0)
        out.append((model, _COLORS[model], vals, [lo, hi]))
    return out


def metrics_plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Tuned vs base and the trivial baselines (majority, copyPrompt, serving when measured): grouped bars with 95 %
    error bars for 0–1 metrics, side panels for perplexity and throughput."""
    by_name = {r["name"]: r for r in rows}
    fractions, panels = chart_metrics()
    frac = [m for m in fractions if m in by_name and by_name[m].get("tuned") is not None]
    others = [(m, label) for m, label in panels if m in by_name and by_name[m].get("tuned") is not None]
    if not frac and not others:
        return False
    plt = _plt()
    widths = [max(3, len(frac))] + [1.3] * len(others)
    fig, axes = plt.subplots(1, 1 + len(others), figsize=(3 + 0.9 * len(frac) + 2.2 * len(others), 4.2), dpi=110,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    ax = axes[0][0]
    xs = range(len(frac))
    series = _series(by_name, frac)
    width = 0.8 / len(series)
    for k, (name, color, vals, errs) in enumerate(series):
        offs = [x - 0.4 + width * (k + 0.5) for x in xs]
        bars = ax.bar(offs, vals, width=width, label=name, color=color,
                      yerr=errs if any(e != [0.0, 0.0] for e in zip(*errs)) else None, capsize=2, error_kw={"linewidth": 0.8})
        for b in bars:
            ax.annotate(f"{b.get_height():.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(frac, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (0–1)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    for i, (m, label) in enumerate(others, 1):
        a = axes[0][i]
        vals = [by_name[m].get("base") or 0.0, by_name[m]["tuned"]]
        bars = a.bar(["base", "tuned"], vals, color=["#9e9e9e", "#2ca02c"])
        for b in bars:
            a.annotate(f"{b.get_height():.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
        a.set_title(label, fontsize=9)
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
