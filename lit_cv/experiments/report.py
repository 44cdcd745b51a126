"""The written results: machine-independent paths, readable durations, and the Markdown table.

Rows name paths relative to the roots they live under (``$DATA_DIR/rps``, ``$OUT/runs/...``, ``configs/X.yaml``), so
a committed ``reproduce.json`` holds no path of the machine it ran on.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def portable(value: Any, roots: Mapping[str, Path]) -> Any:
    """``value`` (a string, or dicts and lists of them) with every path under a root written from its label.

    ``roots`` maps a label to a folder, e.g. ``{"$DATA_DIR": data_dir, "$OUT": out, ".": repo}``: ``/data/rps``
    becomes ``$DATA_DIR/rps``; the label ``.`` is dropped with its slash (``configs/X.yaml``). The longest root
    wins, so an ``out`` inside the repository is ``$OUT``; the filesystem root is never a root.
    """
    folders = {str(Path(p).resolve()): label for label, p in roots.items()}
    prefixes = sorted((p for p in folders if Path(p).parent != Path(p)), key=len, reverse=True)
    pattern = re.compile("(" + "|".join(map(re.escape, prefixes)) + r")(/|(?![\w.-]))") if prefixes else None

    def relative(match: re.Match[str]) -> str:
        label, slash = folders[match.group(1)], match.group(2)
        return "" if label == "." and slash == "/" else label + slash

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return pattern.sub(relative, item) if pattern else item
        if isinstance(item, dict):
            return {key: walk(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [walk(v) for v in item]
        return item

    return walk(value)


def format_duration(seconds: float | None) -> str:
    """``5.6 s``, ``163 s``, ``8.3 min``, ``2.1 h``: as many digits as a reader compares."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 300:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.4f}"
    return str(value)


def _shown_metrics(row: dict[str, Any]) -> list[str]:
    """The course's metrics of a row, else its headline ones, then accuracies and AUROC when present."""
    metrics, course = row.get("metrics", {}), row.get("course", {})
    shown = list(course) or [m for m in ("val/acc", "val/auroc", "val/f1") if m in metrics]
    return shown + [m for m in ("test/acc", "test/auroc", "val/acc", "val/auroc", "train/acc", "train_eval/acc")
                    if m in metrics and m not in shown]


def epoch_seconds(row: dict[str, Any]) -> str:
    """Training seconds of each epoch from the row's history (``12 s/epoch``: the median of more than three;
    ``202 s, 269 s per epoch`` for up to three), ``""`` without a history."""
    ends = [h["seconds"] for h in row.get("history", []) if h.get("seconds") is not None]
    each = [b - a for a, b in zip([0.0, *ends], ends)]
    if not each:
        return ""
    if len(each) > 3:
        return f"{format_duration(statistics.median(each))}/epoch"
    return ", ".join(format_duration(e) for e in each) + " per epoch"


def flip_note(row: dict[str, Any]) -> str:
    """What the validation said of test-time flips, for a row that tried them (else "")."""
    if "flip_validation" not in row:
        return ""
    without, flipped = row["flip_validation"]["without"], row["flip_validation"]["flipped"]
    verdict = "used" if row["test_time_flip"] else "not used"
    return (f"test-time flip {verdict} (validation without / with: val/loss {_fmt(without['val/loss'])} / "
            f"{_fmt(flipped['val/loss'])}, val/acc {_fmt(without['val/acc'])} / {_fmt(flipped['val/acc'])})")


def _row_lines(name: str, row: dict[str, Any]) -> list[str]:
    note = "; ".join(part for part in (row.get("note", ""), flip_note(row)) if part)
    if row["status"] != "ok":
        cells = [name, row.get("group", ""), "–", "–", row["status"], "–", "–", "–", row.get("error", note)]
        return ["| " + " | ".join(cells) + " |"]
    metrics, course = row.get("metrics", {}), row.get("course", {})
    lines = []
    for i, metric in enumerate(_shown_metrics(row)):
        ours = metrics.get(metric)
        if ours is None and metric.startswith("val/") and metric[4:] in row.get("per_class", {}).get("val", {}):
            ours = row["per_class"]["val"][metric[4:]]["correct"]
        ref = course.get(metric)
        diff = ours - ref if isinstance(ours, (int, float)) and isinstance(ref, (int, float)) else None
        first = i == 0
        target = ""
        if first and row.get("target"):
            epoch = row.get("target_epoch")
            reached = "–" if epoch is None else f"{epoch} ({format_duration(row.get('target_seconds'))})"
            if "target_reached" in row:  # a test-set target: measured once, after selection
                reached = "met" if row["target_reached"] else "not met"
            target = f"{row['target']}: {reached}"
        wall = format_duration(row.get("wall_seconds")) if first else ""
        if first and row.get("group") == "transfer" and epoch_seconds(row):
            wall += f" ({epoch_seconds(row)})"
        cells = [name if first else "", row["group"] if first else "", metric, _fmt(ref), _fmt(ours), _fmt(diff),
                 target, wall, note if first else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The results table: each course figure beside ours and the difference, then time-to-accuracy."""
    lines = [
        "# Course experiments reproduced, and beaten",
        "",
        f"Generated by `lit-cv reproduce` on {results['date']}; device: {results['device']}; "
        f"seed {results['seed']}; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}."
        + (" QUICK SMOKE RUN: numbers mean nothing." if results["quick"] else ""),
        "",
        "| experiment | group | metric | course | ours | diff | epoch reaching target | wall time | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        lines += _row_lines(name, row)
    overhead = {n: r for n, r in results["rows"].items() if r.get("plain_loop_seconds")}
    if overhead:
        lines += ["", "## Framework overhead (same data pipeline, net and epochs; `benchmarks/overhead.py`)", "",
                  "| experiment | lit-cv fit | plain PyTorch loop | ratio | plain loop val/acc |",
                  "|---|---|---|---|---|"]
        for name, row in overhead.items():
            ratio = row.get("framework_overhead_ratio")
            lines.append(f"| {name} | {format_duration(row.get('fit_seconds'))} | "
                         f"{format_duration(row['plain_loop_seconds'])} | {'–' if ratio is None else f'{ratio:.1f}x'}"
                         f" | {_fmt(row.get('plain_loop_val/acc'))} |")
    return "\n".join(lines) + "\n"
