"""The gradient-boosting reference for the bank "beat" rows: scikit-learn's ``HistGradientBoostingClassifier`` on the
same held-out rows as ``lit-cv reproduce`` (``lit_cv.experiments.holdout.bank``: the datamodule's stratified split,
seed 13, 20%), with and without ``duration``; prints the test ROC-AUC of each.

    python scripts/bank_gradient_boosting.py --data-dir ../shared/data/bank
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamodules.bank import FILE_NAMES, read_bank_csv, to_numbers
from datamodules.splits import stratified_split
from lit_cv.experiments.holdout import SEED, TEST_FRACTION


def test_auroc(path: Path, drop_duration: bool) -> float:
    """Test ROC-AUC of gradient boosting (native categorical columns, early stopping on 10% of the fit rows)."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    frame, target = read_bank_csv(path)
    labels = frame.pop(target).to_numpy()
    if drop_duration:
        frame = frame.drop(columns=["duration"], errors="ignore")
    columns = {}
    for col in frame.columns:
        parsed = pd.to_numeric(frame[col], errors="coerce")
        columns[col] = to_numbers(frame[col], col, str(path)) if parsed.notna().mean() > 0.9 else \
            frame[col].astype("category")
    table = pd.DataFrame(columns)
    fit, test = stratified_split(labels, TEST_FRACTION, SEED)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=500, learning_rate=0.05,
                                           early_stopping=True, random_state=0)
    model.fit(table.iloc[fit], labels[fit])
    return float(roc_auc_score(labels[test], model.predict_proba(table.iloc[test])[:, 1]))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with bank.csv and/or bank-full.csv")
    args = parser.parse_args(argv)
    results = {}
    for name in FILE_NAMES:
        if (args.data_dir / name).is_file():
            for drop in (False, True):
                key = f"{name} {'without' if drop else 'with'} duration"
                results[key] = test_auroc(args.data_dir / name, drop)
                print(f"{key}: test ROC-AUC {results[key]:.4f}", flush=True)
    if not results:
        raise SystemExit(f"no {' / '.join(FILE_NAMES)} in {args.data_dir}")
    return results


if __name__ == "__main__":
    main()
