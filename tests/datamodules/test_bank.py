"""BankMarketingDataModule on fake Kaggle/UCI CSVs (always) and on ../shared/data/bank (real_data)."""

from __future__ import annotations

import math
from pathlib import Path

import fake_data
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules import BankMarketingDataModule
from datamodules.bank import TabularEncoder

REPO = Path(__file__).resolve().parents[2]

NUMERIC = ["age", "balance", "day", "duration", "campaign", "pdays", "previous"]


def expected_width(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> int:
    """numerics + yes/no columns + one column per category seen, computed from the column list and values."""
    width = 0
    for col in frame.columns:
        if col in drop:
            continue
        if col in NUMERIC or set(frame[col]) <= {"yes", "no"}:
            width += 1
        else:
            width += frame[col].nunique()
    return width


@pytest.mark.parametrize(
    "maker, target", [(fake_data.make_bank_kaggle, "deposit"), (fake_data.make_bank_uci, "y")]
)
def test_both_formats_load(tmp_path, maker, target):
    path = maker(tmp_path / "bank", n=300)
    dm = BankMarketingDataModule(path, batch_size=32, val_split=0.2)
    assert dm.num_classes == 2 and dm.class_names == ["no", "yes"]
    dm.setup("fit")
    frame = pd.read_csv(path, sep=None, engine="python")
    train_frame = frame.loc[dm._frames["train"].index]
    assert dm.num_features == expected_width(train_frame.drop(columns=target))
    x_train, y_train = dm.datasets["train"].tensors
    x_val, y_val = dm.datasets["val"].tensors
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.long
    assert (len(x_train), len(x_val)) == (240, 60)
    assert set(dm._frames["train"].index).isdisjoint(dm._frames["val"].index)
    # stratified: the yes-rate is the same in both splits up to one sample
    assert abs(y_train.float().mean() - y_val.float().mean()) < 2 / len(y_val)
    assert torch.equal(
        y_train, torch.tensor((frame.loc[dm._frames["train"].index, target] == "yes").to_numpy())
    )
    # numerics standardised with TRAIN statistics
    assert torch.allclose(x_train[:, :7].mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(x_train[:, :7].std(0, unbiased=False), torch.ones(7), atol=1e-4)
    age = torch.tensor(frame.loc[dm._frames["val"].index, "age"].to_numpy(), dtype=torch.float32)
    mean, std = train_frame["age"].mean(), train_frame["age"].std(ddof=0)
    assert torch.allclose(x_val[:, 0], (age - mean) / std, atol=1e-5)
    x, _y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, dm.num_features)


def test_folder_prefers_kaggle_file_and_seed_is_deterministic(tmp_path):
    fake_data.make_bank_uci(tmp_path, n=100)
    path = fake_data.make_bank_kaggle(tmp_path, n=150)
    a, b, c = (BankMarketingDataModule(tmp_path, seed=s) for s in (13, 13, 14))
    for dm in (a, b, c):
        dm.setup()
    assert len(a.datasets["train"]) + len(a.datasets["val"]) == 150  # bank.csv, not bank-full.csv
    assert torch.equal(a.datasets["val"].tensors[0], b.datasets["val"].tensors[0])
    assert a._frames["val"].index.equals(b._frames["val"].index)
    assert not a._frames["val"].index.equals(c._frames["val"].index)
    assert path.name == "bank.csv"


def test_unseen_category_encodes_as_zeros():
    train = pd.DataFrame(
        {"age": [30, 40, 50], "job": ["admin.", "student", "admin."], "loan": ["no", "yes", "no"]}
    )
    enc = TabularEncoder.fit(train)
    assert enc.feature_names == ["age", "loan", "job=admin.", "job=student"]
    val = pd.DataFrame({"age": [40], "job": ["astronaut"], "loan": ["no"]})
    assert enc.transform(val).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert enc.transform(train.iloc[[1]]).tolist()[0][1:] == [1.0, 0.0, 1.0]


def test_unseen_category_in_validation_split(tmp_path):
    path = fake_data.make_bank_kaggle(tmp_path, n=200)
    first = BankMarketingDataModule(path, seed=1)
    first.setup()
    val_index = first._frames["val"].index[:5]  # the split depends on the target and the seed only
    frame = pd.read_csv(path)
    frame.loc[val_index, "job"] = "astronaut"  # a job that only validation rows have
    frame.to_csv(path, index=False)
    dm = BankMarketingDataModule(path, seed=1)
    dm.setup()
    assert "job=astronaut" not in dm.feature_names and dm.num_features == first.num_features
    job_cols = [i for i, n in enumerate(dm.feature_names) if n.startswith("job=")]
    rows = np.where(dm._frames["val"]["job"].to_numpy() == "astronaut")[0]
    assert len(rows) == 5
    assert torch.all(dm.datasets["val"].tensors[0][rows][:, job_cols] == 0)
    assert torch.all(
        dm.datasets["val"].tensors[0][:, job_cols].sum(1)[np.setdiff1d(np.arange(40), rows)] == 1
    )


def test_drop_duration_and_state_dict_roundtrip(tmp_path):
    path = fake_data.make_bank_uci(tmp_path, n=120)
    full, dropped = BankMarketingDataModule(path), BankMarketingDataModule(path, drop_duration=True)
    assert dropped.num_features == full.num_features - 1 and "duration" not in dropped.feature_names
    full.setup()
    state = full.state_dict()
    other = BankMarketingDataModule(path, seed=99)
    other.setup()
    other.load_state_dict(state)  # as Lightning does after setup when restoring a checkpoint
    assert other.encoder.state_dict() == state["encoder"]
    x = other.datasets["val"].tensors[0]
    expected = full.encoder.transform(other._frames["val"].drop(columns="y"))
    assert torch.equal(x, expected)


def test_num_features_gives_clear_error_when_file_is_missing(tmp_path):
    dm = BankMarketingDataModule(tmp_path / "nope")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)No bank marketing CSV.*lit-cv download bank --data-dir"
    ):
        _ = dm.num_features
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"none of the target columns \('deposit', 'y'\)"):
        _ = BankMarketingDataModule(tmp_path / "other.csv").num_features


@pytest.mark.real_data
def test_real_bank_shapes(shared_data):
    dm = BankMarketingDataModule(shared_data / "bank" / "bank.csv")
    dm.setup()
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 11162
    assert len(dm.datasets["val"]) == math.ceil(11162 * 0.2)  # sklearn rounds the test size up
    frame = pd.read_csv(shared_data / "bank" / "bank.csv")
    assert frame.shape == (11162, 17) and (frame["deposit"] == "yes").sum() == 5289
    assert dm.num_features == expected_width(dm._frames["train"].drop(columns="deposit"))
    full = BankMarketingDataModule(shared_data / "bank" / "bank-full.csv")
    assert full.num_features == dm.num_features  # the same 16 inputs and categories in both files
    full.setup()
    assert int(torch.cat([t.tensors[1] for t in full.datasets.values()]).sum()) == 5289


def test_cli_links_num_features_into_the_mlp(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lit-cv"])  # pytest's own arguments are not for the CLI
    from lit_cv.cli import LitCVCLI

    path = fake_data.make_bank_kaggle(tmp_path, n=120)
    args = [
        "--config",
        str(REPO / "configs" / "bank_mlp_plain.yaml"),
        f"--data.init_args.data_dir={path}",
        "--trainer.logger=false",
    ]
    cli = LitCVCLI(args=args, run=False)
    expected = BankMarketingDataModule(
        path, drop_duration=True
    ).num_features  # configs/data/bank.yaml drops it
    assert cli.model.net.in_features == expected
    assert cli.model.num_classes == 2
