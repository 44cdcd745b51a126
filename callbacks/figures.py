"""Matplotlib figures for files and TensorBoard, headless (Agg backend)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures render without a display (clusters, CI, containers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(path: str | Path | None = None, dpi: int = 100, **subplots_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``with figure(path, figsize=(6, 4)) as (fig, ax):`` draws, saves to ``path`` (when given) and closes.

    The figure is closed even when drawing raises, so long runs do not accumulate open figures.
    """
    plt = pyplot()
    fig, ax = plt.subplots(**subplots_kwargs)
    try:
        yield fig, ax
        if path is not None:
            save(fig, path, dpi=dpi, close=False)
    finally:
        plt.close(fig)


def save(fig: Any, path: str | Path, dpi: int = 100, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` (parent folders created), then close it unless ``close=False``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if close:
        pyplot().close(fig)
    return path
