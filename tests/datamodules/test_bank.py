"""BankMarketingDataModule on fake Kaggle/UCI CSVs (always) and on ../shared/data/bank (real_data): the three
formats, scikit-learn's encoding fitted on train and reloaded from plain numbers, and a rule for every messy file."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import fake_data
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules import BankMarketingDataModule
from datamodules.bank import TabularEncoder, read_bank_csv

REPO = Path(__file__).resolve().parents[2]

NUMERIC = ["age", "balance", "day", "duration", "campaign", "pdays", "previous"]


def expected_width(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> int:
    """numerics + the pdays "never contacted" flag + one column per two-valued column + one per category of the
    others, computed from the column list and values."""
    width = 0
    for col in frame.columns:
        if col in drop:
            continue
        if col in NUMERIC:
            width += 1 + (col == "pdays" and bool((frame[col] == -1).any()))
        else:
            width += 1 if frame[col].nunique() == 2 else frame[col].nunique()
    return width


def _encoded(dm: BankMarketingDataModule, split: str = "val") -> torch.Tensor:
    return dm.datasets[split].tensors[0]


def _column(dm: BankMarketingDataModule, name: str, split: str = "val") -> torch.Tensor:
    return _encoded(dm, split)[:, dm.feature_names.index(name)]


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
    # numerics standardised with TRAIN statistics (pdays after its "never contacted" values became the median)
    assert dm.feature_names[:7] == NUMERIC and dm.feature_names[7] == "pdays=never_contacted"
    assert torch.allclose(x_train[:, :7].mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(x_train[:, :7].std(0, unbiased=False), torch.ones(7), atol=1e-4)
    age = torch.tensor(frame.loc[dm._frames["val"].index, "age"].to_numpy(), dtype=torch.float32)
    mean, std = train_frame["age"].mean(), train_frame["age"].std(ddof=0)
    assert torch.allclose(x_val[:, 0], (age - mean) / std, atol=1e-5)
    never = torch.tensor((frame.loc[dm._frames["val"].index, "pdays"] == -1).to_numpy(), dtype=torch.float32)
    assert torch.equal(_column(dm, "pdays=never_contacted"), never)
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
        {"age": ["30", "40", "50"], "job": ["admin.", "student", "retired"], "loan": ["no", "yes", "no"]}
    )
    enc = TabularEncoder.fit(train)
    assert enc.feature_names == ["age", "job=admin.", "job=retired", "job=student", "loan=yes"]
    val = pd.DataFrame({"age": ["40"], "job": ["astronaut"], "loan": ["maybe"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn names the unknown categories
        assert enc.transform(val).tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0]]
    row = dict(zip(enc.feature_names, enc.transform(train.iloc[[1]]).tolist()[0]))
    assert row == {"age": 0.0, "job=admin.": 0.0, "job=retired": 0.0, "job=student": 1.0, "loan=yes": 1.0}


def test_unseen_category_in_validation_split(tmp_path):
    path = fake_data.make_bank_kaggle(tmp_path, n=200)
    first = BankMarketingDataModule(path, seed=1)
    first.setup()
    val_index = first._frames["val"].index[:5]  # the split depends on the target and the seed only
    frame = pd.read_csv(path)
    frame.loc[val_index, "job"] = "astronaut"  # a job that only validation rows have
    frame.to_csv(path, index=False)
    dm = BankMarketingDataModule(path, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
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
    expected = full.encoder.transform(other._frames["val"])
    assert torch.equal(x, expected)


def test_reloaded_checkpoint_encodes_new_rows_identically(tmp_path):
    """The fitted numbers survive torch.save / torch.load(weights_only=True) as plain lists; the rebuilt
    scikit-learn transformer encodes rows it never saw (missing values, unseen categories) bit for bit alike."""
    path = fake_data.make_bank_additional(tmp_path, n=300)
    dm = BankMarketingDataModule(path, drop_duration=True)
    dm.setup()
    torch.save({"BankMarketingDataModule": dm.state_dict()}, tmp_path / "dm.ckpt")
    state = torch.load(tmp_path / "dm.ckpt", weights_only=True)["BankMarketingDataModule"]
    plain = (list, dict, str, float, int)
    assert all(isinstance(v, plain) for v in state["encoder"].values())
    reloaded = TabularEncoder.from_state_dict(state["encoder"])
    new_rows = pd.read_csv(fake_data.make_bank_additional(tmp_path / "new", n=50, seed=7), sep=";", dtype=str)
    new_rows.loc[0, "age"], new_rows.loc[1, "job"], new_rows.loc[2, "marital"] = "", "astronaut", ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert torch.equal(reloaded.transform(new_rows), dm.encoder.transform(new_rows))
        assert torch.isfinite(reloaded.transform(new_rows)).all()
    assert reloaded.feature_names == dm.feature_names


def test_the_encoding_is_scikit_learns_fitted_on_train(tmp_path):
    from sklearn.compose import ColumnTransformer

    path = fake_data.make_bank_kaggle(tmp_path, n=200)
    dm = BankMarketingDataModule(path)
    dm.setup()
    assert isinstance(dm.encoder.transformer, ColumnTransformer)
    train = dm._frames["train"]
    ages = pd.to_numeric(train["age"])
    assert dm.encoder.medians[0] == ages.median() and dm.encoder.means[0] == pytest.approx(ages.mean())
    assert dm.encoder.categories["job"] == sorted(train["job"].unique())


def test_old_checkpoint_encoding_is_refused_clearly():
    old = {"binary": ["loan"], "categories": {}, "means": {"age": 40.0}, "stds": {"age": 10.0}}
    with pytest.raises(ValueError, match="older lit-cv .* Train the model again"):
        BankMarketingDataModule("unused").load_state_dict({"encoder": old})


def test_predict_ids_are_the_csv_rows_of_the_test_split(tmp_path):
    path = fake_data.make_bank_kaggle(tmp_path, n=100)
    dm = BankMarketingDataModule(path)
    dm.setup("predict")
    ids = dm.predict_ids()
    assert len(ids) == len(dm.datasets["val"]) and ids == sorted(ids)
    frame = pd.read_csv(path)
    assert torch.equal(dm.datasets["val"].tensors[1], torch.tensor((frame.loc[ids, "deposit"] == "yes").to_numpy()))


def test_predictions_csv_names_the_csv_row_of_each_prediction(tmp_path, tiny_trainer_kwargs):
    import csv

    from lightning.pytorch import Trainer

    from callbacks import PredictionWriter
    from lit_cv import Classifier
    from lit_cv.nets import TabularMLP

    path = fake_data.make_bank_uci(tmp_path, n=150)
    dm = BankMarketingDataModule(path, batch_size=16)
    model = Classifier(net=TabularMLP(in_features=dm.num_features, hidden=[8]), task="binary", num_classes=2)
    writer = PredictionWriter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(**{**tiny_trainer_kwargs, "callbacks": [writer]}).predict(model, datamodule=dm)
    rows = list(csv.DictReader(writer.last_path.open()))
    frame = pd.read_csv(path, sep=";")
    assert len(rows) == len(dm.datasets["val"]) and len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert int(row["label"]) == int(frame.loc[int(row["id"]), "y"] == "yes")  # the row the prediction is of


# ---------------------------------------------------------------------------------------------- bank-additional
def test_bank_additional_full_format(tmp_path):
    path = fake_data.make_bank_additional(tmp_path, n=400)
    dm = BankMarketingDataModule(tmp_path)  # found in the folder by name
    dm.setup()
    frame = pd.read_csv(path, sep=";")
    assert frame.shape[1] == 21 and dm._target == "y"
    numeric = ["age", "duration", "campaign", "pdays", "previous", "emp.var.rate", "cons.price.idx",
               "cons.conf.idx", "euribor3m", "nr.employed"]
    assert dm.encoder.numeric == numeric and dm.encoder.indicators == ["pdays"]
    assert "pdays=never_contacted" in dm.feature_names
    assert {"job=unknown", "default=unknown", "default=yes", "default=no", "contact=telephone"} <= set(
        dm.feature_names
    )
    assert "contact=cellular" not in dm.feature_names  # two values: one 0/1 column
    val = frame.loc[dm._frames["val"].index]
    assert torch.equal(
        _column(dm, "pdays=never_contacted"), torch.tensor((val["pdays"] == 999).to_numpy(), dtype=torch.float32)
    )
    # 999 is no number of days: the contacted rows' train median fills it, standardised with their statistics
    contacted = pd.to_numeric(frame.loc[dm._frames["train"].index, "pdays"]).replace(999, np.nan)
    assert dm.encoder.medians[3] == contacted.median()
    pdays = _column(dm, "pdays", "train")
    assert pdays.abs().max() < 10 and torch.isfinite(_encoded(dm, "train")).all()
    width = len(numeric) + 1 + sum(
        1 if frame[c].nunique() == 2 else frame.loc[dm._frames["train"].index, c].nunique()
        for c in frame.columns if c not in (*numeric, "y")
    )
    assert dm.num_features == width
    dropped = BankMarketingDataModule(path, drop_duration=True)
    assert dropped.num_features == dm.num_features - 1 and "duration" not in dropped.feature_names


# ---------------------------------------------------------------------------------------------- messy files
def _write(tmp_path: Path, rows: list[dict[str, str]], name: str = "bank.csv", sep: str = ",") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)
    return path


def _kaggle_rows(tmp_path: Path, n: int = 200) -> list[dict[str, str]]:
    return pd.read_csv(fake_data.make_bank_kaggle(tmp_path / "src", n=n), dtype=str).to_dict("records")


def test_nan_in_a_numeric_column_is_the_train_median_plus_an_indicator(tmp_path):
    rows = _kaggle_rows(tmp_path)
    for i in range(3, 200, 10):
        rows[i]["balance"] = ""
    for i in range(5, 200, 20):
        rows[i]["age"] = "NaN"
    dm = BankMarketingDataModule(_write(tmp_path, rows))
    dm.setup()
    x = torch.cat([_encoded(dm, "train"), _encoded(dm, "val")])
    assert torch.isfinite(x).all()  # before: NaN features, NaN loss
    assert dm.encoder.indicators == ["age", "balance", "pdays"]  # pdays: -1 means never contacted
    assert {"age=missing", "balance=missing"} <= set(dm.feature_names)
    train = pd.DataFrame(rows).loc[dm._frames["train"].index]
    assert dm.encoder.medians[dm.encoder.numeric.index("balance")] == pd.to_numeric(train["balance"]).median()
    for split in ("train", "val"):
        blank = torch.tensor((dm._frames[split]["balance"] == "").to_numpy(), dtype=torch.float32)
        assert torch.equal(_column(dm, "balance=missing", split), blank)


def test_unknown_in_a_numeric_column_is_missing_not_a_category(tmp_path):
    rows = _kaggle_rows(tmp_path)
    for i in (7, 8, 9, 10, 11):
        rows[i]["age"] = "unknown"
    dm = BankMarketingDataModule(_write(tmp_path, rows))
    clean = BankMarketingDataModule(tmp_path / "src" / "bank.csv")
    assert [n for n in dm.feature_names if n.startswith("age")] == ["age", "age=missing"]
    assert dm.num_features == clean.num_features + 1  # before: one one-hot column per distinct age


def test_other_text_in_a_numeric_column_is_refused_naming_file_column_line_value(tmp_path):
    rows = _kaggle_rows(tmp_path)
    rows[10]["balance"] = "12,5k"
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match=r"bank.csv.*column 'balance', line 12: '12,5k' is not a finite number"):
        BankMarketingDataModule(path).setup()


def test_a_blank_pdays_is_imputed_and_flagged(tmp_path):
    rows = _kaggle_rows(tmp_path)
    for i in range(5, 200, 10):  # pandas 3 returned a read-only array here; writing the sentinels into it crashed
        rows[i]["pdays"] = ""
    dm = BankMarketingDataModule(_write(tmp_path, rows))
    dm.setup("fit")
    flag = _encoded(dm, "train")[:, dm.feature_names.index("pdays=never_contacted")]
    assert torch.isfinite(_encoded(dm, "train")).all() and flag.sum() > 0


def test_an_infinite_number_is_refused_naming_the_line(tmp_path):
    rows = _kaggle_rows(tmp_path)
    rows[3]["balance"] = "inf"
    with pytest.raises(ValueError, match=r"column 'balance', line 5: 'inf' is not a finite number"):
        BankMarketingDataModule(_write(tmp_path, rows)).setup()


def test_a_file_of_one_class_is_refused_for_training(tmp_path):
    rows = [row for row in _kaggle_rows(tmp_path) if row["deposit"] == "no"]
    with pytest.raises(ValueError, match=r"every row has the label 0 \(no\); a classifier needs rows of both"):
        BankMarketingDataModule(_write(tmp_path, rows)).setup()


def test_a_header_one_name_short_is_refused_not_shifted(tmp_path):
    # R's write.table writes row names with no header cell: pandas would read `age` under the index, and every
    # column under its neighbour's name (duration would survive drop_duration as another column).
    path = fake_data.make_bank_uci(tmp_path / "bank", n=200)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [f'"r{i}";{line}' for i, line in enumerate(lines[1:])]) + "\n")
    with pytest.raises(ValueError, match=r"data rows have one field more than the header .*Add a name for it"):
        BankMarketingDataModule(path).setup()


def test_an_index_column_with_a_blank_header_is_dropped(tmp_path):
    path = fake_data.make_bank_kaggle(tmp_path / "src", n=300)
    sample = pd.read_csv(path, dtype=str).sample(frac=0.8, random_state=0)  # row numbers no longer consecutive
    sample.to_csv(tmp_path / "bank.csv")  # pandas writes the index under a blank header cell
    dm = BankMarketingDataModule(tmp_path / "bank.csv")
    with pytest.warns(UserWarning, match=r"Unnamed: 0 \(no name: an index column\)"):
        dm.setup("fit")
    assert not [name for name in dm.feature_names if name.startswith("Unnamed")]


def test_id_and_free_text_columns_are_dropped_with_a_warning(tmp_path):
    rows = _kaggle_rows(tmp_path)
    for i, row in enumerate(rows):
        row["client_id"] = f"C{i:05d}"
        row["row"] = str(i)
        row["notes"] = f"called on day {i % 97} about offer {i * 7919 % 1009}"
    dm = BankMarketingDataModule(_write(tmp_path, rows))
    with pytest.warns(UserWarning, match=r"dropped 3 column\(s\).*client_id.*row \(row numbers\).*notes"):
        names = dm.feature_names
    assert not any(n.split("=")[0] in ("client_id", "row", "notes") for n in names)
    assert dm.num_features == BankMarketingDataModule(tmp_path / "src" / "bank.csv").num_features


def test_nan_in_a_categorical_column_is_its_own_category(tmp_path):
    rows = _kaggle_rows(tmp_path)
    for i in range(0, 200, 9):
        rows[i]["job"] = ""
    dm = BankMarketingDataModule(_write(tmp_path, rows))
    dm.setup()
    assert "job=<missing>" in dm.feature_names and "job=unknown" in dm.feature_names
    blank = torch.tensor((dm._frames["train"]["job"] == "").to_numpy(), dtype=torch.float32)
    assert torch.equal(_column(dm, "job=<missing>", "train"), blank)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"empty\.csv' is empty"),
        (b"age,job,deposit\n", r"header\.csv' has a header but no data rows"),
        (b"just one line of text\nand another\n", r"one\.csv' has a single column"),
    ],
    ids=["empty", "header-only", "not-csv"],
)
def test_unusable_files_get_one_message_naming_the_file(tmp_path, content, match):
    name = {"": "empty.csv", "age": "header.csv"}.get(content[:3].decode(), "one.csv")
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        BankMarketingDataModule(path).setup()


def test_latin1_file_is_read_with_a_warning(tmp_path):
    rows = _kaggle_rows(tmp_path, n=100)
    rows[0]["job"] = rows[1]["job"] = "técnico"
    path = tmp_path / "latin1.csv"
    pd.DataFrame(rows).to_csv(path, index=False, encoding="latin-1")
    with pytest.warns(UserWarning, match=r"latin1.csv' is not UTF-8 .* reading it as Latin-1"):
        frame, _target = read_bank_csv(path)
    assert frame.loc[0, "job"] == "técnico"
    dm = BankMarketingDataModule(path)
    with pytest.warns(UserWarning):
        assert "job=técnico" in dm.feature_names


def test_tab_separated_file_is_sniffed(tmp_path):
    rows = _kaggle_rows(tmp_path, n=100)
    tsv = BankMarketingDataModule(_write(tmp_path, rows, "bank.tsv", sep="\t"))
    csv = BankMarketingDataModule(tmp_path / "src" / "bank.csv")
    tsv.setup()
    csv.setup()
    assert tsv.feature_names == csv.feature_names
    assert torch.equal(_encoded(tsv), _encoded(csv))


@pytest.mark.parametrize(
    ("yes", "no"), [("yes", "no"), ("Yes", "No"), ("YES", "no"), ("1", "0"), ("true", "false"), ("True", "False")]
)
def test_label_spellings(tmp_path, yes, no):
    rows = _kaggle_rows(tmp_path, n=100)
    expected = [1 if r["deposit"] == "yes" else 0 for r in rows]
    for r in rows:
        r["deposit"] = yes if r["deposit"] == "yes" else no
    frame, target = read_bank_csv(_write(tmp_path, rows))
    assert frame[target].tolist() == expected


def test_bad_label_names_file_line_and_value(tmp_path):
    rows = _kaggle_rows(tmp_path, n=100)
    rows[5]["deposit"] = "maybe"
    with pytest.raises(ValueError, match=r"bank.csv', column 'deposit', line 7: label 'maybe' is not one of"):
        read_bank_csv(_write(tmp_path, rows))


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
    assert dm.num_features == expected_width(dm._frames["train"].drop(columns="deposit").pipe(
        lambda f: f.astype({c: int for c in NUMERIC})
    ))
    full = BankMarketingDataModule(shared_data / "bank" / "bank-full.csv")
    assert full.num_features == dm.num_features  # the same 16 inputs and categories in both files
    full.setup()
    assert int(torch.cat([t.tensors[1] for t in full.datasets.values()]).sum()) == 5289
    assert torch.isfinite(_encoded(full, "train")).all()


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
