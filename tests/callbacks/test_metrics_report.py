import json

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from callbacks import MetricsReport
from callbacks.metrics_report import write_metrics_json
from datamodules import DigitsDataModule
from lit_cv import Classifier


def _tiny_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Classifier(net, num_classes=10)


def test_fit_then_test_merge_into_one_file(tiny_trainer_kwargs, tmp_path):
    report = MetricsReport()
    kwargs = {**tiny_trainer_kwargs, "logger": TensorBoardLogger(tmp_path, name="t"), "limit_val_batches": None,
              "limit_test_batches": None}
    trainer = Trainer(**kwargs, callbacks=[report])
    dm = DigitsDataModule(image_size=8)
    model = _tiny_model()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    data = json.loads(report.last_path.read_text())
    assert report.last_path == tmp_path / "t" / "version_0" / "metrics.json"
    assert set(data) == {"fit", "test"}
    history = data["fit"]["history"]
    assert [h["epoch"] for h in history] == [0] and history[0]["val/acc"] == data["fit"]["metrics"]["val/acc"]
    assert data["fit"]["fit_seconds"] >= history[0]["seconds"] > 0
    assert report.state_dict()["history"] == history
    assert "val/acc" in data["fit"]["metrics"] and "val" in data["fit"]["per_class"]
    confusion = model.confusion["test"]
    per_class = data["test"]["per_class"]["test"]
    assert [per_class[str(c)]["correct"] for c in range(10)] == confusion.diag().tolist()
    assert sum(v["total"] for v in per_class.values()) == 359
    expected_acc = confusion.diag().sum().item() / confusion.sum().item()
    assert abs(data["test"]["metrics"]["test/acc"] - expected_acc) < 1e-6


def test_write_merges_and_keeps_other_stages(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics_json(path, "fit", {"metrics": {"val/acc": 0.5}})
    write_metrics_json(path, "test", {"metrics": {"test/acc": 0.7}})
    assert json.loads(path.read_text()) == {"fit": {"metrics": {"val/acc": 0.5}}, "test": {"metrics": {"test/acc": 0.7}}}
