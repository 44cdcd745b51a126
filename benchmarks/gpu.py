"""The GPU path, measured in one run: step time of fp32 / bf16-mixed / + channels_last / + compile, GPU utilisation,
the ratio to a plain loop on the same GPU, and a 1-GPU ``configs/trainer/ddp.yaml`` run with the CLI's defaults.

    python benchmarks/gpu.py [--rps-dir DIR] [--cats-dogs-dir DIR] [--out results/gpu.md]

Workloads: CNN2 on RPS at 28 px (batch 16; a few MB, so lit-cv keeps it on the device: see
:mod:`datamodules.loaders`) and EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, all layers training, one logit)
on Cats-vs-Dogs at 224 px (batch 32). Each uses the real data when its folder is given and exists, else synthetic
tensors of the same shapes (2,520 / 2,002 samples), served through the package's loaders either way.

For every workload and variant, ``--steps`` training steps after ``--warmup`` (compilation, cuDNN autotuning) are
timed between two ``cuda.synchronize()``: once through a ``Trainer`` with lit-cv's ``Classifier``, the precision
plugin and the ``ChannelsLast`` / ``Compile`` callbacks (a rich progress bar and a TensorBoard logger on, as users
run it), once as a plain loop with the same net, optimizer, autocast, memory format and compiled module. GPU
utilisation is sampled every 0.1 s (``torch.cuda.utilization``, else ``nvidia-smi``) during the lit-cv steps.
Prints one Markdown document (device name first) meant for ``results/gpu.md``; ``--out`` also writes it there.
Without CUDA it says so and exits 0 (``--device cpu`` runs the same code on the CPU, for tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

from datamodules.loaders import DataLoadersMixin, split_tensors

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16-mixed", "bf16-mixed+channels_last", "bf16-mixed+channels_last+compile")
WORKLOADS = ("cnn2_rps", "lite0_cats_dogs")


class SyntheticImages(DataLoadersMixin, LightningDataModule):
    """Normalised random images and labels, ``train`` and ``val`` the same tensors (a stand-in of the same shapes)."""

    def __init__(self, num_samples: int, image_size: int, num_classes: int, batch_size: int) -> None:
        super().__init__()
        self.save_hyperparameters({"batch_size": batch_size, "num_workers": None})
        g = torch.Generator().manual_seed(0)
        x = torch.randn(num_samples, 3, image_size, image_size, generator=g)
        data = TensorDataset(x, torch.randint(0, num_classes, (num_samples,), generator=g))
        self.datasets = {"train": data, "val": data, "test": data}


def _workload(name: str, options: argparse.Namespace) -> tuple[Callable[[], nn.Module], LightningDataModule, str, str]:
    """(net factory, datamodule, task, data description)."""
    if name == "cnn2_rps":
        from lit_cv.nets import CNN2

        factory = lambda: CNN2(n_feature=5, p=0.3, image_size=28)
        if options.rps_dir and Path(options.rps_dir).is_dir():
            from datamodules import RPSDataModule

            return factory, RPSDataModule(data_dir=options.rps_dir, batch_size=16, image_size=28), "multiclass", "RPS"
        return factory, SyntheticImages(2520, 28, 3, 16), "multiclass", "synthetic 2,520 x 3 x 28 x 28"
    import timm

    factory = lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1)
    if options.cats_dogs_dir and Path(options.cats_dogs_dir).is_dir():
        from datamodules import CatsDogsDataModule

        dm = CatsDogsDataModule(data_dir=options.cats_dogs_dir, batch_size=32, image_size=224, normalize="imagenet")
        return factory, dm, "binary", "Cats-vs-Dogs 224 px"
    return factory, SyntheticImages(2002, 224, 2, 32), "binary", "synthetic 2,002 x 3 x 224 x 224"


class _StepWindow(Callback):
    """Times ``steps`` training steps after ``warmup`` ones (synchronised) and samples GPU utilisation meanwhile."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.seconds = float("nan")
        self.utilisation: list[float] = []
        self._start = 0.0
        self._sampler: _UtilisationSampler | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            _synchronize(self.device)
            self._sampler = _UtilisationSampler(self.device).start()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps:
            _synchronize(self.device)
            self.seconds = time.perf_counter() - self._start
            if self._sampler is not None:
                self.utilisation = self._sampler.stop()
            trainer.should_stop = True


class _UtilisationSampler:
    """GPU utilisation (percent) every 0.1 s in a thread: ``torch.cuda.utilization`` (pynvml), else nvidia-smi."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.values: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _UtilisationSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        return self.values

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except (ModuleNotFoundError, RuntimeError):  # no pynvml / NVML: ask nvidia-smi
            if shutil.which("nvidia-smi") is None:
                return None
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={self.device.index or 0}"], capture_output=True, text=True, timeout=5,
                                 check=False)
            return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _run(self) -> None:
        while not self._done.wait(0.1):
            value = self._read()
            if value is not None:
                self.values.append(value)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lit_cv_steps(factory: Callable[[], nn.Module], dm: LightningDataModule, task: str, variant: str,
                  options: argparse.Namespace, device: torch.device, log_dir: Path) -> tuple[float, list[float], nn.Module]:
    """Seconds per step of lit-cv's Classifier in a Trainer, GPU utilisation samples, and the (trained) net."""
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import ChannelsLast, Compile
    from lit_cv.classifier import Classifier

    seed_everything(0)
    net = factory()
    model = Classifier(net, task=task, num_classes=2 if task == "binary" else 3,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-4))
    window = _StepWindow(options.warmup, options.steps, device)
    callbacks: list[Callback] = [window, RichProgressBar()]
    if "channels_last" in variant:
        callbacks.append(ChannelsLast())
    if "compile" in variant:
        callbacks.append(Compile())
    trainer = Trainer(accelerator=device.type, devices=1, precision="bf16-mixed" if "bf16" in variant else "32-true",
                      max_steps=options.warmup + options.steps, limit_val_batches=0, num_sanity_val_steps=0,
                      enable_checkpointing=False, logger=TensorBoardLogger(log_dir, name=variant),
                      callbacks=callbacks, enable_model_summary=False)
    trainer.fit(model, dm)
    return window.seconds / options.steps, window.utilisation, net


def _plain_steps(net: nn.Module, dm: LightningDataModule, task: str, variant: str, options: argparse.Namespace,
                 device: torch.device) -> float:
    """Seconds per step of the same net (compiled in place if the variant compiles) in a plain loop."""
    net = net.to(device)
    if "channels_last" in variant:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss() if task == "binary" else nn.CrossEntropyLoss()
    tensors = split_tensors(dm.datasets["train"])
    batch_size = dm.hparams.batch_size
    if tensors is not None:  # what lit-cv does with a small tensor split: keep it on the device
        x_all, y_all = (t.to(device) for t in tensors)
        batches = lambda: ((x_all[i], y_all[i]) for i in torch.randperm(len(y_all), device=device).split(batch_size))
    else:
        loader = dm.train_dataloader()
        batches = lambda: ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in variant)
    done, start = 0, 0.0
    while done < options.warmup + options.steps:
        for x, y in batches():
            if done == options.warmup:
                _synchronize(device)
                start = time.perf_counter()
            if "channels_last" in variant:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = net(x)
                loss = loss_fn(logits.squeeze(1), y.float()) if task == "binary" else loss_fn(logits, y.long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == options.warmup + options.steps:
                break
    _synchronize(device)
    return (time.perf_counter() - start) / options.steps


def _ddp_run(device: torch.device, log_dir: Path) -> str:
    """``lit-cv fit`` of the quickstart with ``configs/trainer/ddp.yaml`` on one GPU, defaults on, 2 epochs."""
    lit_cv = Path(sys.executable).parent / "lit-cv"
    if not lit_cv.exists():
        return "skipped: the `lit-cv` console script is not installed here (`pip install -e .`)"
    command = [str(lit_cv), "fit", "--config", "configs/quickstart.yaml", "--config", "configs/trainer/ddp.yaml",
               "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(log_dir / "ddp")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device.index or 0)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - start
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    metrics = sorted((log_dir / "ddp").rglob("metrics.json"))
    summary = f"exit {result.returncode} in {seconds:.0f} s"
    if metrics:
        import json

        fit = json.loads(metrics[-1].read_text()).get("fit", {}).get("metrics", {})
        summary += f", val/acc {fit.get('val/acc', float('nan')):.4f}, val/loss {fit.get('val/loss', float('nan')):.4f}"
    return summary if result.returncode == 0 else summary + " -- " + " | ".join(tail)


def measure(options: argparse.Namespace, device: torch.device) -> str:
    """Run every workload x variant (and the DDP run); return the Markdown document."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (test run)"
    intro = (f"torch {torch.__version__}; `python benchmarks/gpu.py` (warm-up {options.warmup} steps, {options.steps} "
             "timed). lit-cv = `Classifier` in a `Trainer` with a rich progress bar and a TensorBoard logger; plain = "
             "the same net, optimizer, autocast, memory format and compilation in a hand-written loop over the same "
             "tensors.")
    header = ("| workload | data | variant | lit-cv ms/step | plain ms/step | lit-cv / plain | GPU util % (mean) | "
              "lit-cv samples/s |")
    lines = [f"# GPU path: {name}", "", intro, "", header, "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in options.workloads:
            factory, dm, task, description = _workload(name, options)
            dm.prepare_data()
            dm.setup("fit")
            batch_size = dm.hparams.batch_size
            for variant in options.variants:
                try:
                    lit, utilisation, net = _lit_cv_steps(factory, dm, task, variant, options, device, Path(tmp))
                    plain = _plain_steps(net, dm, task, variant, options, device)
                except Exception as error:  # noqa: BLE001 - one failing variant (e.g. compile) must not lose the others
                    lines.append(f"| {name} | {description} | {variant} | failed: {type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:120]} | | | | |")
                    continue
                util = f"{sum(utilisation) / len(utilisation):.0f}" if utilisation else "n/a"
                lines.append(f"| {name} | {description} | {variant} | {lit * 1e3:.2f} | {plain * 1e3:.2f} | "
                             f"{lit / plain:.2f} | {util} | {batch_size / lit:.0f} |")
                print(lines[-1], flush=True)
        if options.ddp:
            ddp = _ddp_run(device, Path(tmp))
            lines += ["", f"1-GPU `configs/trainer/ddp.yaml` run (quickstart, 2 epochs, defaults): {ddp}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--rps-dir", default=None, help="RPS data folder (default: synthetic tensors)")
    parser.add_argument("--cats-dogs-dir", default=None, help="Cats-vs-Dogs data folder (default: synthetic tensors)")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=list(WORKLOADS), help=",".join(WORKLOADS))
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS), help=",".join(VARIANTS))
    parser.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the 1-GPU ddp.yaml run")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a test of the script itself)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here (e.g. results/gpu.md)")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    unknown = sorted(set(options.workloads) - set(WORKLOADS)) + sorted(set(options.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown workload/variant {unknown}; workloads: {', '.join(WORKLOADS)}; "
                     f"variants: {', '.join(VARIANTS)}")
    if options.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py measures the CUDA path, but torch sees no CUDA GPU here "
              "(torch.cuda.is_available() is False): nothing measured. Run it on a machine with a GPU.")
        return 0
    device = torch.device("cuda", torch.cuda.current_device()) if options.device == "cuda" else torch.device("cpu")
    document = measure(options, device)
    print(document)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
