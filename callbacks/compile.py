"""Compile the model's net in place with ``torch.compile`` before it runs."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class Compile(Callback):
    """Compiles ``pl_module.net`` (or the whole module if it has no ``net``) with ``nn.Module.compile``.

    In-place compilation keeps parameter names, so checkpoints load with or without this callback (wrapping in
    ``torch.compile(net)`` would prefix every key with ``_orig_mod.``). The first batches are slow while the graph
    compiles; worth it for long GPU runs, rarely on CPU.

    Args:
        mode: ``torch.compile`` mode: ``None`` (default), ``"reduce-overhead"``, ``"max-autotune"`` or
            ``"max-autotune-no-cudagraphs"``.
        backend: compiler backend (``"inductor"``; ``"eager"`` only traces, for debugging).
        fullgraph: fail on graph breaks instead of falling back to Python.
        dynamic: ``True``/``False`` to force or forbid dynamic shapes; ``None`` lets torch decide.

    Raises:
        ValueError: for an unknown ``mode``.

    Example::

        trainer:
          callbacks+:
            - class_path: callbacks.Compile
              init_args: {mode: max-autotune}
    """

    SUPPORTED_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

    def __init__(
        self, mode: str | None = None, backend: str = "inductor", fullgraph: bool = False, dynamic: bool | None = None
    ) -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"Unknown torch.compile mode {mode!r}; use one of {self.SUPPORTED_MODES}.")
        self.kwargs: dict[str, Any] = {"mode": mode, "backend": backend, "fullgraph": fullgraph, "dynamic": dynamic}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        target = getattr(pl_module, "net", pl_module)
        # Private torch attribute, set by nn.Module.compile (no public "is compiled" query): compile once across
        # fit -> test.
        if getattr(target, "_compiled_call_impl", None) is None:
            target.compile(**self.kwargs)
