"""Figures written next to the metrics (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_confusion_png(
    confusion: list[list[int]], class_names: list[str], path: Path, title: str
) -> None:
    """Row-normalised confusion matrix with the counts written in the cells."""
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.8 * n), dpi=100)
    rates = [[c / max(sum(row), 1) for c in row] for row in confusion]
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center",
                    color="white" if rates[i][j] > 0.5 else "black", fontsize=8)  # fmt: skip
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
