"""The course experiments: one :class:`Experiment` per row of ``results/reproduce.md``, with the published figures.

The ``course`` rows train with the course's settings; the ``beat`` rows use the project's tools to do better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # configs are given relative to the repository root
KINDS = ("fit", "lr-find", "normaliser")


@dataclass
class Experiment:
    """One row of the table.

    Args:
        name: row id (``--only`` selects by it).
        kind: ``fit`` (train through ``lit-cv fit``), ``lr-find`` (``lit-cv lr-find``) or ``normaliser``.
        data: dataset folder under ``--data-dir`` (rps, mnist, cats_dogs, bank).
        configs: YAML files passed as repeated ``--config``, relative to the repository root.
        args: extra CLI overrides.
        course: published course figures, by metric name.
        target: (metric, value): time-to-accuracy is the first epoch reaching it.
        group: ``course`` (same settings as the course), ``beat`` (the project's tools) or ``transfer`` (a pretrained
            backbone).
        plain_loop: also time the same training as a plain PyTorch loop (``benchmarks/overhead.py``).
        data_subdir: path under the dataset folder given as ``data_dir``.
        note: shown in the table's last column.
        select: (metric, "max"|"min") of a config whose EarlyStopping restores the best weights: the row reports
            the validation metrics of that best epoch (the weights the fit ends with), not of the last epoch.
        holdout: select on a validation split carved from the training data and report the selected checkpoint
            (the config's ``checkpoint.monitor``) once on a test set the fit never saw
            (:mod:`lit_cv.experiments.holdout`); a ``test/...`` target is then met or not, at no epoch.
        flip_candidate: with ``holdout``, validate the selected checkpoint with and without
            ``--model.test_time_flip`` and test with the flip only when it lowers val/loss and does not lower
            val/acc (rule fixed before any run; :func:`lit_cv.experiments.runners.choose_test_time_flip`).

    Raises:
        ValueError: for a ``kind`` not in ``KINDS``.
    """

    name: str
    kind: str
    data: str
    configs: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    course: dict[str, float] = field(default_factory=dict)
    target: tuple[str, float] | None = None
    group: str = "course"
    plain_loop: bool = False
    data_subdir: str = ""
    note: str = ""
    select: tuple[str, str] | None = None
    holdout: bool = False
    flip_candidate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Experiment {self.name!r}: kind {self.kind!r} is not one of {KINDS}.")


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "rps_normaliser", "normaliser", "rps",
        course={"mean_r": 0.8502, "mean_g": 0.8215, "mean_b": 0.8116, "std_r": 0.2089, "std_g": 0.2512,
                "std_b": 0.2659},
    ),
    Experiment(
        "rps_cnn2_dropout", "fit", "rps", ["configs/rps_cnn2_dropout.yaml"],
        course={"val/acc": 326 / 372, "train_eval/acc": 2504 / 2520, "val/paper": 89, "val/rock": 118,
                "val/scissors": 117},
        target=("val/acc", 0.85), plain_loop=True,
    ),
    Experiment(
        "rps_cnn2_no_dropout", "fit", "rps", ["configs/rps_cnn2_no_dropout.yaml"],
        course={"val/acc": 292 / 372, "train_eval/acc": 1.0}, target=("val/acc", 0.75), plain_loop=True,
    ),
    Experiment(
        "rps_lr_range_test", "lr-find", "rps", ["configs/rps_cnn2_dropout.yaml"],
        args=["--start-lr", "3e-4", "--end-lr", "0.1", "--num-iter", "100", "--skip-end", "5"],
        course={"suggestion": 9e-3},
        note="torch-lr-finder settings of the course: start at the optimizer's 3e-4, end 0.1, 100 iterations",
    ),
    Experiment(
        "mnist_convnet", "fit", "mnist", ["configs/mnist_convnet.yaml"],
        args=["--data.init_args.train_from", "test"], data_subdir="raw",
        course={"val/acc": 0.99}, target=("val/acc", 0.985),
        note="8,000/2,000 split of the real 10,000-image test set (train images are not in shared data)",
    ),
    *[
        Experiment(f"bank_mlp_{variant}", "fit", "bank", [f"configs/bank_mlp_{variant}.yaml"],
                   target=("val/auroc", 0.92), data_subdir="bank.csv")
        for variant in ("plain", "l1", "l2", "dropout", "all")
    ],
    Experiment("cats_dogs_convnet", "fit", "cats_dogs", ["configs/cats_dogs_convnet.yaml"], target=("val/acc", 0.7),
               args=["--trainer.max_epochs", "5"], note="5 epochs on CPU (the config says 10)"),
    # ------------------------------------------------------------------ beat them: selected on a validation split
    # carved from the training data, reported once on a test set (lit_cv/experiments/holdout.py)
    Experiment("rps_beat", "fit", "rps", ["configs/rps_beat.yaml"], group="beat", holdout=True,
               flip_candidate=True, target=("test/acc", 0.98), select=("val/loss", "min"), course={"test/acc": 326 / 372},
               note="test = the official 372 images (the course's validation set), validation = 1 of 7 hands per class "
                    "of rps/; published: 0.9785"),
    Experiment("mnist_beat", "fit", "mnist", ["configs/mnist_beat.yaml"], group="beat", holdout=True,
               data_subdir="raw", target=("test/acc", 0.99), select=("val/loss", "min"),
               course={"test/acc": 0.99},
               note="test = 2,000 of the 10,000 official test images (the course row's validation images)"),
    Experiment("cats_dogs_beat", "fit", "cats_dogs", ["configs/cats_dogs_beat.yaml"], group="beat", holdout=True,
               flip_candidate=True, target=("test/acc", 0.85), select=("val/loss", "min"), course={"test/acc": 0.82},
               note="test = 401 of the 2,002 images; course figure: Chollet's 0.82 (2,000 training images)"),
    *[
        Experiment(f"{prefix}_{variant}", "fit", "bank", ["configs/bank_beat.yaml"], group="beat", holdout=True,
                   args=["--data.init_args.drop_duration", str(drop).lower()], data_subdir=file,
                   target=("test/auroc", 0.80 if drop else 0.95), select=("val/auroc", "max"),
                   course={"test/auroc": 0.80 if drop else 0.948},
                   note=f"{file}, test = 20% held out; "
                        + ("`duration` dropped (known only after the call); Moro et al. 0.80" if drop else
                           "`duration` kept (it leaks the outcome); gradient boosting ~0.948"))
        for prefix, file in (("bank_beat", "bank.csv"), ("bank_full_beat", "bank-full.csv"))
        for variant, drop in (("duration", False), ("no_duration", True))
    ],
    # ------------------------------------------------------------------ transfer learning: ImageNet EfficientNet-Lite0
    # (offline weights), the lecture's three modes and gradual unfreezing. Cats-vs-Dogs validates on the 401 images
    # the datamodule's seeded stratified split holds out of train/ (cats_dogs_beat's test images); fixed epochs, no
    # selection on them.
    *[
        Experiment(f"cats_dogs_lite0_{mode}", "fit", "cats_dogs", [f"configs/cats_dogs_lite0_{mode}.yaml"],
                   group="transfer", target=("val/acc", goal), course={"val/acc": anchor}, note=note)
        for mode, goal, anchor, note in (
            ("head", 0.95, 0.90, ("frozen backbone, new head, features cached; course: Chollet's VGG16 features "
                                 "without augmentation")),
            ("last_blocks", 0.97, 0.97, "blocks.6 + conv_head fine-tuned; course: Chollet's fine-tuned VGG16"),
            ("finetune", 0.97, 0.97, ("everything fine-tuned but BatchNorm (kept as pretrained), cosine lr; course: "
                                      "Chollet's fine-tuned VGG16")),
            ("gradual", 0.97, 0.97, ("head 1 epoch, then everything (BackboneFinetuning); course: Chollet's "
                                    "fine-tuned VGG16")),
        )
    ],
    Experiment("rps_lite0", "fit", "rps", ["configs/rps_lite0.yaml"], group="transfer", holdout=True,
               target=("test/acc", 0.98), select=("val/loss", "min"), course={"test/acc": 326 / 372},
               note="pretrained backbone; test = the official 372 images, validation = 1 of 7 hands per class of rps/"),
]
