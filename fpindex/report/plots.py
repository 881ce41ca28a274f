"""The HTML report's figures: score distributions and the ROC curve, as PNG bytes.

matplotlib's Agg backend (no display needed), one figure per plot, no timestamp in the PNG metadata, so the
same audit gives byte-identical figures."""

from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

COLOURS = {"used": "#c0392b", "not used": "#2471a3", "unlabelled": "#7f8c8d"}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _figure(width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def score_histogram(groups: dict[str, np.ndarray], threshold: Optional[float], score_name: str) -> bytes:
    """Overlaid histograms of the score per group (used / not used / unlabelled), with the threshold."""
    fig, ax = _figure()
    values = [v for v in groups.values() if len(v)]
    allv = np.concatenate(values) if values else np.zeros(1)
    lo, hi = float(np.min(allv)), float(np.max(allv))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 31)
    for name, v in groups.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} ({len(v)})", color=COLOURS.get(name))
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    ax.set_xlabel(score_name)
    ax.set_ylabel("real images")
    ax.legend(fontsize=8)
    return _png(fig)


def roc_curve(y_true: Sequence[int], score: Sequence[float]) -> bytes:
    """The ROC curve of `score` against the known labels, with its AUC in the legend."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, _ = sk_roc(y_true, score)
    auc = roc_auc_score(y_true, score)
    fig, ax = _figure(4.0, 3.6)
    # Above the frame and inside a margin: a perfect run's curve runs along the left and top edges.
    ax.plot(fpr, tpr, color=COLOURS["used"], linewidth=2, zorder=3, clip_on=False, label=f"fpindex (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def sensitivity_curves(rows: Sequence[dict], fpr: float) -> bytes:
    """Recall at a fixed false-positive rate against strength: one panel and curve per plant kind, each in its
    kind's own unit (a rotation in degrees and a blend's image count share no axis)."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    cols = min(4, len(kinds)) or 1
    nrows = -(-len(kinds) // cols) or 1
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.6 * nrows), layout="constrained", sharey=True,
                             squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["strength"])
        x = [r["strength"] for r in mine]
        y = [r["recall"] if r["recall"] is not None else np.nan for r in mine]
        ax.plot(x, y, marker="o", color=COLOURS["used"])
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel(mine[0].get("unit", "strength"), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(kinds):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"recall at {fpr:.0%} FPR", fontsize=8)
    return _png(fig)
