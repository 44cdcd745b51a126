"""The range test's figure (loss against LR, log x-axis, suggestion marked) and its files (PNG and JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callbacks.figures import pyplot, save
from callbacks.lr_range_test.curve import LRRangeTestResult

FIGSIZE = (6.4, 4.2)


def plot_curve(result: LRRangeTestResult, ax: Any = None) -> Any:
    """Smoothed (and faint raw) loss against LR on a log x-axis, the suggestion marked; returns the Figure.

    Draws on ``ax``, or on a new figure of :data:`FIGSIZE` when ``ax`` is None. Every recorded point is drawn,
    whatever the skip counts; without a suggestion the title says why.
    """
    if ax is None:
        fig, ax = pyplot().subplots(figsize=FIGSIZE)
    else:
        fig = ax.figure
    ax.plot(result.lrs, result.raw_losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
    ax.plot(result.lrs, result.losses, color="tab:blue", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    if result.suggestion is not None and result.suggestion_index is not None:
        i = result.suggestion_index
        ax.plot([result.lrs[i]], [result.losses[i]], "o", color="tab:red", markersize=9,
                label=f"{result.method}: {result.suggestion:.3g}")
        ax.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"LR range test: suggested LR {result.suggestion:.3g} ({result.method})")
    else:
        ax.set_title("LR range test: no suggestion (see message)", fontsize=10)
        ax.text(0.02, 0.02, result.message, transform=ax.transAxes, fontsize=7, wrap=True, va="bottom")
    ax.legend(loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(result: LRRangeTestResult, folder: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``folder``; returns their paths by kind."""
    folder = Path(folder)
    return {
        "json": result.save_json(folder / f"{stem}.json"),
        "png": save(plot_curve(result), folder / f"{stem}.png", dpi=100),
    }
