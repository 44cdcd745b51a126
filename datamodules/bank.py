"""Bank marketing (Moro, Cortez & Rita 2014; UCI, CC BY 4.0) as a tabular LightningDataModule.

Predict whether a client subscribes a term deposit. Reads Kaggle's ``bank.csv`` (comma separated, target
``deposit``) and UCI's ``bank-full.csv`` / ``bank-additional-full.csv`` (semicolon separated, quoted, target
``y``); the separator and the target are detected. Every preprocessing number comes from the TRAIN split only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import TensorDataset

from datamodules.loaders import DataLoadersMixin, check_loader_args
from datamodules.splits import check_val_split, stratified_split

TARGETS = ("deposit", "y")  # Kaggle, UCI
FILE_NAMES = ("bank.csv", "bank-full.csv", "bank-additional-full.csv")  # looked up in this order in a folder
LAYOUT = (
    "  DATA_DIR/bank.csv (Kaggle: comma separated, target `deposit`) or DATA_DIR/bank-full.csv / "
    "bank-additional-full.csv (UCI: semicolon separated, target `y`), or the path of one such file"
)


@dataclass
class TabularEncoder:
    """Column encoding fitted on the train split: yes/no -> 0/1, one-hot categoricals, standardised numerics.

    A category not seen in training encodes as all zeros; a yes/no column's unseen value as 0.
    """

    binary: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: Any) -> TabularEncoder:
        import pandas as pd

        enc = cls()
        for col in frame.columns:
            values = frame[col]
            if pd.api.types.is_numeric_dtype(values):
                std = float(values.std(ddof=0))
                enc.means[col], enc.stds[col] = float(values.mean()), std if std > 0 else 1.0
            elif set(values.astype(str).unique()) <= {"yes", "no"}:
                enc.binary.append(col)
            else:
                enc.categories[col] = sorted(values.astype(str).unique().tolist())
        return enc

    @property
    def feature_names(self) -> list[str]:
        names = list(self.means) + list(self.binary)
        for col, cats in self.categories.items():
            names += [f"{col}={c}" for c in cats]
        return names

    def transform(self, frame: Any) -> torch.Tensor:
        parts = [
            ((frame[c].to_numpy(dtype=np.float64) - m) / self.stds[c])[:, None] for c, m in self.means.items()
        ]
        parts += [(frame[c].astype(str).to_numpy() == "yes").astype(np.float64)[:, None] for c in self.binary]
        for col, cats in self.categories.items():
            values = frame[col].astype(str).to_numpy()
            parts.append((values[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float64))
        return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))

    def state_dict(self) -> dict[str, Any]:
        return {"binary": self.binary, "categories": self.categories, "means": self.means, "stds": self.stds}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TabularEncoder:
        return cls(**{k: state[k] for k in ("binary", "categories", "means", "stds")})


def find_bank_file(data_dir: str | Path) -> Path:
    """The CSV to read: the path itself, or the first of ``FILE_NAMES`` inside the folder."""
    path = Path(data_dir).expanduser()
    if path.is_file():
        return path
    for name in FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"No bank marketing CSV at {str(path)!r}. Expected:\n{LAYOUT}\n"
        f"Get the data with `lit-cv download bank --data-dir {path}`."
    )


def read_bank_csv(path: Path) -> tuple[Any, str]:
    """The table and its target column; the separator (``,`` or ``;``) is detected from the header line."""
    import pandas as pd

    with open(path, encoding="utf-8") as f:
        header = f.readline()
    sep = ";" if header.count(";") > header.count(",") else ","
    frame = pd.read_csv(path, sep=sep)
    target = next((t for t in TARGETS if t in frame.columns), None)
    if target is None:
        raise ValueError(
            f"{str(path)!r} has none of the target columns {TARGETS} (columns: {list(frame.columns)}); "
            "is it a bank marketing file?"
        )
    bad = sorted(set(frame[target].astype(str)) - {"yes", "no"})
    if bad:
        raise ValueError(f"Target column {target!r} of {str(path)!r} must hold yes/no, found {bad[:5]}.")
    return frame, target


class BankMarketingDataModule(DataLoadersMixin, LightningDataModule):
    """Bank marketing as float32 feature vectors and labels no=0, yes=1.

    Preprocessing, fitted on the train split only: yes/no columns -> 0/1; other text columns one-hot with the
    categories seen in training (an unseen category encodes as all zeros); numeric columns standardised with the
    train mean and (population) std. The split is stratified on the target and seeded; ``test``/``predict``
    use the validation split. The fitted encoding is kept in ``state_dict()`` (the checkpoint).

    Args:
        data_dir: a bank marketing CSV, or a folder holding ``bank.csv``, ``bank-full.csv`` or
            ``bank-additional-full.csv`` (the first found).
        batch_size: samples per batch.
        num_workers: DataLoader workers (``None``: 0, the data are in-memory tensors).
        val_split: fraction held out for validation.
        drop_duration: drop ``duration`` (the UCI notes say it is known only after the call and leaks the outcome).
        seed: seed of the split.

    ``num_features`` (the input width after one-hot) is available right after ``__init__`` (it reads the CSV on
    first access) so the CLI can link it into the net::

        data:
          class_path: datamodules.BankMarketingDataModule
          init_args: {data_dir: data/bank, batch_size: 64, drop_duration: true}
    """

    TEST_SPLIT = "val"

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 64,
        num_workers: int | None = None,
        val_split: float = 0.2,
        drop_duration: bool = False,
        seed: int = 13,
    ) -> None:
        super().__init__()
        check_val_split(val_split)
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.num_classes = 2
        self.class_names = ["no", "yes"]
        self.encoder: TabularEncoder | None = None
        self.datasets: dict[str, TensorDataset] = {}
        self._frames: dict[str, Any] = {}
        self._target = ""

    @property
    def num_features(self) -> int:
        """Input width after encoding; reads the CSV and fits the encoder on first access."""
        return len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """Encoded column names (``age``, ..., ``job=admin.``, ...); reads the CSV on first access."""
        return self._fitted_encoder().feature_names

    def _fitted_encoder(self) -> TabularEncoder:
        self._prepare()
        if self.encoder is None:  # unreachable: _prepare fits it
            raise RuntimeError("BankMarketingDataModule: the encoder was not fitted.")
        return self.encoder

    def _prepare(self) -> None:
        if self._frames:
            return
        path = find_bank_file(self.data_dir)
        frame, self._target = read_bank_csv(path)
        if self.hparams.drop_duration and "duration" in frame.columns:
            frame = frame.drop(columns="duration")
        train, val = stratified_split(
            frame[self._target].to_numpy(), self.hparams.val_split, self.hparams.seed
        )
        self._frames = {"train": frame.iloc[train], "val": frame.iloc[val]}
        if self.encoder is None:
            self.encoder = TabularEncoder.fit(self._frames["train"].drop(columns=self._target))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._prepare()
        self._encode()

    def _encode(self) -> None:
        encoder = self._fitted_encoder()
        for name, frame in self._frames.items():
            x = encoder.transform(frame.drop(columns=self._target))
            y = torch.from_numpy((frame[self._target].astype(str).to_numpy() == "yes").astype(np.int64))
            self.datasets[name] = TensorDataset(x, y)

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict()} if self.encoder is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "encoder" not in state_dict:
            return
        self.encoder = TabularEncoder.from_state_dict(state_dict["encoder"])
        if self.datasets:  # Lightning restores after setup(): re-encode with the checkpoint's numbers
            self._encode()
