"""Bank marketing (Moro, Cortez & Rita 2014; UCI, CC BY 4.0) as a tabular LightningDataModule.

Predict whether a client subscribes a term deposit. Reads Kaggle's ``bank.csv`` (comma separated, target
``deposit``), UCI's ``bank-full.csv`` and ``bank-additional-full.csv`` (semicolon separated, quoted, target ``y``)
and other CSVs of their kind. The encoding is scikit-learn's (``ColumnTransformer``: median ``SimpleImputer`` and
``StandardScaler`` for numbers, ``MissingIndicator``, ``OneHotEncoder(handle_unknown="ignore")`` for text), fitted on
the TRAIN split only; its fitted numbers go into the checkpoint as plain lists (no pickle).

How a messy file is read (each case is a rule, none is silent):

- an empty or header-only file, one that is not CSV, or one without a target column: a ``ValueError`` naming the file;
- encoding: UTF-8 (with or without BOM), else Latin-1 with a warning; delimiter: sniffed among ``,`` ``;`` and tab;
- labels (``deposit`` / ``y``): ``yes``/``no``, ``true``/``false``, ``1``/``0`` in any case; anything else (or a blank)
  is refused naming the file, the line and the value;
- a column is numeric when at least ``NUMERIC_SHARE`` of its cells that are not missing parse as numbers. Missing
  numeric cells (blank, ``NA``, ``NaN``, ``null``, ``None``, ``?``, ``unknown``) are imputed with the train median and
  flagged in a ``<column>=missing`` 0/1 column; any other text in a numeric column is refused naming the file, column,
  line and value;
- ``pdays`` ``-1`` (bank.csv, bank-full.csv) and ``999`` (bank-additional-full.csv) mean "never contacted": missing
  numbers (median) flagged in ``pdays=never_contacted``;
- text columns are one-hot with the train split's categories; UCI's ``unknown`` is a category, a blank cell is the
  category ``<missing>``; a category not seen in training encodes as all zeros; a two-valued column is one 0/1 column;
- id and free-text columns are dropped with a warning: text with more than ``max(20, min(MAX_CATEGORIES, rows / 2))``
  distinct values, or one per row (in a table of more than ``MIN_ID_ROWS`` rows), integers numbering the rows (a
  consecutive range, one per row), columns with a blank header cell (an index written along) and columns with no
  value at all; a header with one name fewer than the rows (R's row names) is refused.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import TensorDataset

from datamodules.loaders import DataLoadersMixin, check_loader_args
from datamodules.splits import check_val_split, stratified_split

TARGETS = ("deposit", "y")  # Kaggle, UCI
FILE_NAMES = ("bank.csv", "bank-full.csv", "bank-additional-full.csv")  # looked up in this order in a folder
LAYOUT = (
    "  DATA_DIR/bank.csv (Kaggle: comma separated, target `deposit`) or DATA_DIR/bank-full.csv / "
    "bank-additional-full.csv (UCI: semicolon separated, target `y`), or the path of one such file"
)
LABELS = {"yes": 1, "no": 0, "true": 1, "false": 0, "1": 1, "0": 0, "1.0": 1, "0.0": 0}  # lower-cased, stripped
DELIMITERS = ",;\t"
BLANKS = frozenset({"", "na", "n/a", "nan", "null", "none"})  # a missing cell in any column
NUMERIC_MISSING = BLANKS | {"?", "unknown"}  # also missing in a numeric column
NUMERIC_SHARE = 0.9  # share of the non-missing cells that must parse as numbers for a numeric column
MAX_CATEGORIES = 100  # more distinct values than this (or than half the rows, at least 20): an id / free text
MIN_ID_ROWS = 20  # one distinct value per row makes a column an id only in tables longer than this
UNNAMED = re.compile(r"Unnamed: \d+")  # pandas' name for a column whose header cell is blank
SENTINELS = {"pdays": ("never_contacted", (-1.0, 999.0))}  # column: (indicator name, values meaning "none")
MISSING_CATEGORY = "<missing>"
ENCODING_VERSION = 2  # 1: the hand-written encoder of lit-cv <= 0.x (not readable any more)


# ---- reading ---------------------------------------------------------------------------------------------------
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


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{str(path)!r} is empty; expected a CSV with a header line and data rows.\n{LAYOUT}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        rank_zero_warn(
            f"{str(path)!r} is not UTF-8 (byte {raw[err.start]:#x} at offset {err.start}); reading it as Latin-1. "
            "Save it as UTF-8 to silence this warning."
        )
        return raw.decode("latin-1")


def _delimiter(text: str, path: Path) -> str:
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = text.splitlines()[0]
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=counts.get)
        if counts[best] == 0:
            raise ValueError(
                f"{str(path)!r} has a single column (no `,`, `;` or tab in its header {header[:80]!r}); "
                f"expected a CSV.\n{LAYOUT}"
            ) from None
        return best


def read_bank_csv(path: Path) -> tuple[Any, str]:
    """The table (every cell a stripped string) and its target column, labels checked (see the module docstring)."""
    import pandas as pd

    text = _decode(path)
    sep = _delimiter(text, path)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable CSV (separator {sep!r}): {err}") from None
    shifted = not isinstance(frame.index, pd.RangeIndex)  # pandas took each row's surplus first field as the index
    if shifted:
        raise ValueError(
            f"{str(path)!r}: the data rows have one field more than the header ({len(frame.columns)} names), so every "
            "column would be read under its neighbour's name. The first field of each row has no name (a row-name "
            "column, as R's write.table writes it). Add a name for it at the start of the header, or remove it."
        )
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda col: col.str.strip())
    target = next((t for t in TARGETS if t in frame.columns), None)
    if target is None:
        raise ValueError(
            f"{str(path)!r} has none of the target columns {TARGETS} (columns: {list(frame.columns)[:20]}); "
            "is it a bank marketing file?"
        )
    if frame.empty:
        raise ValueError(f"{str(path)!r} has a header but no data rows.")
    labels = frame[target].str.lower()
    bad = ~labels.isin(list(LABELS))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame[target].iloc[row]
        raise ValueError(
            f"{str(path)!r}, column {target!r}, line {_line(labels, row)}: label {value!r} is not one of yes/no, "
            f"true/false, 1/0 (any case); {int(bad.sum())} row(s) like it. Fix or remove those rows."
        )
    frame[target] = labels.map(LABELS).astype(np.int64)
    return frame, target


# ---- column types ----------------------------------------------------------------------------------------------
def _is_missing(values: Any, tokens: frozenset[str]) -> np.ndarray:
    return values.str.lower().isin(list(tokens)).to_numpy()


def _line(values: Any, position: int) -> int:
    """The file line of a cell: rows keep read_csv's index (0 = the first data row, on line 2) through splits."""
    label = values.index[position]
    return int(label) + 2 if isinstance(label, (int, np.integer)) else position + 2


def to_numbers(values: Any, column: str, source: str) -> np.ndarray:
    """A numeric column's cells as float64 (missing words and sentinels -> NaN); other text is refused.

    Raises:
        ValueError: naming ``source``, the column, the first bad line and its value.
    """
    import pandas as pd

    missing = _is_missing(values, NUMERIC_MISSING)
    # A copy: with masked cells, pandas 3 hands back a read-only view, and the sentinels below are written into it.
    numbers = np.array(pd.to_numeric(values.where(~missing, None), errors="coerce"), dtype=np.float64)
    bad = ~np.isfinite(numbers) & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}, column {column!r}, line {_line(values, row)}: {values.iloc[row]!r} is not a finite number in a "
            f"numeric column ({int(bad.sum())} such cell(s)). Fix the value, or leave the cell blank (a missing "
            f"number: train median plus a `{column}=missing` indicator)."
        )
    if column in SENTINELS:
        numbers[np.isin(numbers, SENTINELS[column][1])] = np.nan
    return numbers


def to_categories(values: Any) -> np.ndarray:
    """A text column's cells as an object array; blank cells -> NaN (imputed as ``<missing>``)."""
    return values.where(~_is_missing(values, BLANKS), np.nan).to_numpy(dtype=object)


def infer_columns(frame: Any, source: str) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns of ``frame`` (strings, no target); ids and free text are dropped
    with one warning (see the module docstring)."""
    import pandas as pd

    numeric, categorical, dropped = [], [], []
    rows = len(frame)
    max_categories = max(20, min(MAX_CATEGORIES, rows // 2))
    for col in frame.columns:
        values = frame[col]
        if UNNAMED.fullmatch(str(col)):  # a blank header cell: an index written along (pandas' to_csv, R's write.csv)
            dropped.append(f"{col} (no name: an index column)")
            continue
        present = values[~_is_missing(values, NUMERIC_MISSING)]
        if (~_is_missing(values, BLANKS)).sum() == 0:
            dropped.append(f"{col} (empty)")
            continue
        parsed = pd.to_numeric(present, errors="coerce")
        if len(present) and parsed.notna().mean() >= NUMERIC_SHARE:
            ints = parsed.dropna()
            if len(ints) == rows > MIN_ID_ROWS and (ints % 1 == 0).all() and ints.nunique() == rows and (
                ints.max() - ints.min() == rows - 1
            ):
                dropped.append(f"{col} (row numbers)")
            else:
                numeric.append(col)
            continue
        distinct = values.nunique()
        if (distinct == rows and rows > MIN_ID_ROWS) or distinct > max_categories:
            dropped.append(f"{col} ({distinct} distinct values)")
        else:
            categorical.append(col)
    if dropped:
        rank_zero_warn(
            f"{source}: dropped {len(dropped)} column(s) that look like ids or free text: {', '.join(dropped)}. "
            "Encode them yourself (or remove them from the file) to use them."
        )
    return numeric, categorical


# ---- the encoding ----------------------------------------------------------------------------------------------
def _column_transformer(
    numeric: list[str], indicators: list[str], categorical: list[str], categories: Any = "auto"
) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numbers = Pipeline(
        [("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler())]
    )
    text = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            (
                "onehot",
                OneHotEncoder(
                    categories=categories, handle_unknown="ignore", drop="if_binary", sparse_output=False
                ),
            ),
        ]
    )
    missing = MissingIndicator(features="all")
    return ColumnTransformer([("num", numbers, numeric), ("missing", missing, indicators), ("cat", text, categorical)])


@dataclass
class TabularEncoder:
    """scikit-learn's encoding of the feature columns (see the module docstring), kept as plain numbers.

    ``fit`` fits the ``ColumnTransformer`` on the train rows; ``state_dict`` holds its numbers (medians, means,
    scales, categories) as lists, and ``from_state_dict`` rebuilds the same transformer from them, so a reloaded
    checkpoint encodes new rows exactly as training did.
    """

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    indicators: list[str] = field(default_factory=list)  # numeric columns with missing values in training
    categories: dict[str, list[str]] = field(default_factory=dict)
    medians: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    _transformer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(
        cls, frame: Any, source: str = "the table", columns: tuple[list[str], list[str]] | None = None
    ) -> TabularEncoder:
        """Fit on ``frame`` (string cells, no target); ``columns`` = (numeric, categorical), else inferred."""
        numeric, categorical = columns if columns is not None else infer_columns(frame, source)
        table = _typed(frame, numeric, categorical, source)
        indicators = [c for c in numeric if table[c].isna().any()]
        transformer = _column_transformer(numeric, indicators, categorical).fit(table)
        enc = cls(numeric, categorical, indicators, _transformer=transformer)
        if numeric:
            steps = transformer.named_transformers_["num"].named_steps
            enc.medians = steps["impute"].statistics_.tolist()
            enc.means, enc.scales = steps["scale"].mean_.tolist(), steps["scale"].scale_.tolist()
        if categorical:
            onehot = transformer.named_transformers_["cat"].named_steps["onehot"]
            enc.categories = {c: [str(v) for v in cats] for c, cats in zip(categorical, onehot.categories_)}
        return enc

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        names += [f"{c}={SENTINELS[c][0]}" if c in SENTINELS else f"{c}=missing" for c in self.indicators]
        for col in self.categorical:
            cats = self.categories[col]
            names += [f"{col}={c}" for c in (cats[1:] if len(cats) == 2 else cats)]  # drop="if_binary"
        return names

    def transform(self, frame: Any, source: str = "the table") -> torch.Tensor:
        """float32 features of ``frame`` (string cells; extra columns such as the target are ignored)."""
        table = _typed(frame, self.numeric, self.categorical, source)
        return torch.from_numpy(np.asarray(self.transformer.transform(table), dtype=np.float32))

    @property
    def transformer(self) -> Any:
        if self._transformer is None:
            self._transformer = self._rebuild()
        return self._transformer

    def _rebuild(self) -> Any:
        """The fitted ColumnTransformer from the numbers: fitted on a stand-in table of the right columns, then
        given the stored statistics (the estimators' documented fitted attributes)."""
        import pandas as pd

        cats = [self.categories[c] for c in self.categorical]
        rows = max([len(c) for c in cats] + [1])
        stand_in = pd.DataFrame(
            {
                **{c: np.zeros(rows) for c in self.numeric},
                **{c: [v[i % len(v)] for i in range(rows)] for c, v in zip(self.categorical, cats)},
            },
            columns=[*self.numeric, *self.categorical],
        ).astype({c: object for c in self.categorical})
        transformer = _column_transformer(self.numeric, self.indicators, self.categorical, cats or "auto")
        transformer.fit(stand_in)
        if self.numeric:
            steps = transformer.named_transformers_["num"].named_steps
            steps["impute"].statistics_ = np.asarray(self.medians, dtype=np.float64)
            steps["scale"].mean_ = np.asarray(self.means, dtype=np.float64)
            steps["scale"].scale_ = np.asarray(self.scales, dtype=np.float64)
            steps["scale"].var_ = steps["scale"].scale_**2
        return transformer

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": ENCODING_VERSION,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "indicators": list(self.indicators),
            "categories": {c: list(v) for c, v in self.categories.items()},
            "medians": list(self.medians),
            "means": list(self.means),
            "scales": list(self.scales),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TabularEncoder:
        if state.get("version") != ENCODING_VERSION:
            raise ValueError(
                "This checkpoint's bank-marketing encoding was written by an older lit-cv (hand-written encoder, "
                "no missing-value handling); it cannot encode rows as the new one does. Train the model again."
            )
        keys = ("numeric", "categorical", "indicators", "categories", "medians", "means", "scales")
        return cls(**{k: state[k] for k in keys})


def _typed(frame: Any, numeric: list[str], categorical: list[str], source: str) -> Any:
    """The columns the encoder reads, as float64 (numeric) and object (text) columns."""
    import pandas as pd

    missing = [c for c in (*numeric, *categorical) if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the column(s) {missing} that the encoding was fitted with.")
    data = {c: to_numbers(frame[c], c, source) for c in numeric}
    data.update({c: to_categories(frame[c]) for c in categorical})
    return pd.DataFrame(data, index=frame.index, columns=[*numeric, *categorical])


# ---- the datamodule --------------------------------------------------------------------------------------------
class BankMarketingDataModule(DataLoadersMixin, LightningDataModule):
    """Bank marketing as float32 feature vectors and labels no=0, yes=1.

    The CSV is read and encoded as the module docstring says (numbers: train median for missing values, a 0/1
    missing indicator, standardised with the train mean and population std; text: one-hot with the train
    categories). The split is stratified on the target and seeded; ``test``/``predict`` use the validation split.
    The fitted encoding is kept in ``state_dict()`` (the checkpoint) as plain lists; ``predict_ids()`` gives the
    0-based data row (pandas' index) of each prediction.

    Args:
        data_dir: a bank marketing CSV, or a folder holding ``bank.csv``, ``bank-full.csv`` or
            ``bank-additional-full.csv`` (the first found).
        batch_size: samples per batch.
        num_workers: DataLoader workers (``None``: 0, the data are in-memory tensors).
        val_split: fraction held out for validation.
        drop_duration: drop ``duration`` (the UCI notes say it is known only after the call and leaks the outcome).
        seed: seed of the split.

    ``num_features`` (the input width after encoding) is available right after ``__init__`` (it reads the CSV on
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
        data_dir = str(data_dir)  # hparams (in checkpoints) hold plain values: torch.load(weights_only=True) reads them
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.num_classes = 2
        self.class_names = ["no", "yes"]
        self.encoder: TabularEncoder | None = None
        self.datasets: dict[str, TensorDataset] = {}
        self._frames: dict[str, Any] = {}
        self._target = ""
        self._source = ""

    @property
    def num_features(self) -> int:
        """Input width after encoding; reads the CSV and fits the encoder on first access."""
        return len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """Encoded column names (``age``, ..., ``pdays=never_contacted``, ``job=admin.``, ...); reads the CSV on
        first access."""
        return self._fitted_encoder().feature_names

    def predict_ids(self) -> list[int]:
        """The 0-based data row in the CSV of each sample that ``predict`` sees, in order."""
        self._prepare()
        return [int(i) for i in self._frames[self.TEST_SPLIT].index]

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
        self._source = repr(str(path))
        if self.hparams.drop_duration and "duration" in frame.columns:
            frame = frame.drop(columns="duration")
        features = frame.drop(columns=self._target)
        columns = infer_columns(features, self._source) if self.encoder is None else None
        numeric = columns[0] if columns is not None else self.encoder.numeric  # type: ignore[union-attr]
        for col in numeric:
            if col in features.columns:
                to_numbers(features[col], col, self._source)  # refuse stray text in any split, naming the line
        labels = frame[self._target].to_numpy()
        if self.encoder is None and len(np.unique(labels)) < 2:  # fitting: one class teaches nothing, AUROC is NaN
            raise ValueError(
                f"{self._source}, column {self._target!r}: every row has the label {int(labels[0])} "
                f"({'yes' if labels[0] else 'no'}); a classifier needs rows of both classes. Use the whole file "
                "(a filtered or truncated export keeps only one)."
            )
        train, val = stratified_split(labels, self.hparams.val_split, self.hparams.seed)
        self._frames = {"train": frame.iloc[train], "val": frame.iloc[val]}
        if self.encoder is None:
            train_features = self._frames["train"].drop(columns=self._target)
            self.encoder = TabularEncoder.fit(train_features, self._source, columns)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._prepare()
        self._encode()

    def _encode(self) -> None:
        encoder = self._fitted_encoder()
        for name, frame in self._frames.items():
            x = encoder.transform(frame, self._source)
            y = torch.tensor(frame[self._target].to_numpy(dtype=np.int64))
            self.datasets[name] = TensorDataset(x, y)

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict()} if self.encoder is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "encoder" not in state_dict:
            return
        self.encoder = TabularEncoder.from_state_dict(state_dict["encoder"])
        if self.datasets:  # Lightning restores after setup(): re-encode with the checkpoint's numbers
            self._encode()
