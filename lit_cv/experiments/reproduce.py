"""Run the registered experiments and write ``OUT/reproduce.json`` (every figure) and ``OUT/reproduce.md`` (the table).

Rows whose data or config is missing are reported as skipped; a row that raises is reported as failed and the
others still run. With ``only``, the other rows of an existing ``reproduce.json`` are kept: each finished row is
merged into the file as it is on disk then, so partial runs (even concurrent ones) add up.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_cv.cli import SEED
from lit_cv.experiments.registry import EXPERIMENTS, REPO, Experiment
from lit_cv.experiments.report import portable, render_markdown
from lit_cv.experiments.runners import RUNNERS


def _versions() -> dict[str, str]:
    import lightning
    import torch
    import torchmetrics
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__}


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _run_row(exp: Experiment, data_dir: Path, out: Path, quick: bool) -> dict[str, Any]:
    base = {"group": exp.group, "kind": exp.kind, "course": exp.course, "note": exp.note}
    missing = [c for c in exp.configs if not (REPO / c).is_file()]
    if not data_dir.exists():
        return {**base, "status": "skipped", "error": f"data missing: {data_dir}"}
    if missing:
        return {**base, "status": "skipped", "error": f"config missing: {missing}"}
    print(f"[reproduce] {exp.name} ...", flush=True)
    try:
        return {**base, **RUNNERS[exp.kind](exp, data_dir, out, quick)}
    except Exception as err:  # noqa: BLE001 - one broken row must not lose the others
        return {**base, "status": "failed", "error": f"{type(err).__name__}: {err}"}


def reproduce(data_dir: Path, out: Path, only: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the experiments named in ``only`` (default: all) on ``data_dir``, writing the results under ``out``.

    Paths in the results are relative: ``$DATA_DIR`` stands for ``data_dir``, ``$OUT`` for ``out``, and repository
    files are named from the repository root.

    Raises:
        ValueError: for a name in ``only`` that is not registered (the message lists the registered ones).
    """
    known = [e.name for e in EXPERIMENTS]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {sorted(known)}")
    data_dir, out = data_dir.resolve(), out.resolve()
    roots = {"$DATA_DIR": data_dir, "$OUT": out, ".": REPO, "~": Path.home()}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    json_path = out / "reproduce.json"
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": _device(),
              "versions": _versions(), "quick": quick, "seed": SEED}
    results = {**header, "rows": {}}
    if not only:  # a full run starts a new file
        json_path.write_text(json.dumps(results, indent=2, default=str))
    for exp in EXPERIMENTS:
        if only and exp.name not in only:
            continue
        row = portable(_run_row(exp, data_dir / exp.data / exp.data_subdir, out, quick), roots)
        print(f"[reproduce] {exp.name}: {row['status']} {row.get('metrics', row.get('error', ''))}", flush=True)
        results = _merge_row(json_path, header, exp.name, row)
    (out / "reproduce.md").write_text(render_markdown(results))
    return results


def _merge_row(json_path: Path, header: dict[str, Any], name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Write ``row`` into ``json_path``, keeping every other row as it is on disk NOW (another ``--only`` run may
    have added some since this one started); rows in registry order. Returns the merged results."""
    on_disk = json.loads(json_path.read_text()) if json_path.is_file() else {}
    rows = {**on_disk.get("rows", {}), name: row}
    order = [e.name for e in EXPERIMENTS] + sorted(set(rows) - {e.name for e in EXPERIMENTS})
    results = {**header, "rows": {n: rows[n] for n in order if n in rows}}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(json_path)
    return results
