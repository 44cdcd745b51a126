import itertools

import pytest
import torch
from conftest import REPO_ROOT
from fake_data import make_bank_kaggle
from torch import nn

from lit_cv.classifier import Classifier
from lit_cv.cli import LitCVCLI
from lit_cv.nets import TabularMLP

CONFIGS = REPO_ROOT / "configs"


@pytest.mark.parametrize(("in_features", "hidden", "num_classes"), [(47, (64, 32, 16), 1), (5, (8, 4, 2), 3)])
def test_output_shape_and_parameter_count(in_features, hidden, num_classes):
    net = TabularMLP(in_features, hidden=hidden, num_classes=num_classes)
    widths = [in_features, *hidden, num_classes]
    expected = sum(a * b + b for a, b in itertools.pairwise(widths))
    assert sum(p.numel() for p in net.parameters()) == expected
    out = net(torch.randn(4, in_features))
    assert out.shape == (4, num_classes)


def test_dropout_on_input_and_every_hidden_layer():
    net = TabularMLP(10, hidden=(8, 8, 8), p_input=0.2, p_hidden=0.5)
    kinds = [type(m) for m in net.layers]
    assert kinds == [nn.Dropout] + [nn.Linear, nn.ReLU, nn.Dropout] * 3 + [nn.Linear]
    assert [m.p for m in net.layers if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5, 0.5]
    x = torch.randn(16, 10)
    assert not torch.equal(net.train()(x), net(x))
    assert torch.equal(net.eval()(x), net(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "in_features is not set.*data.num_features"),
        ({"in_features": 0}, "in_features must be >= 1"),
        ({"in_features": 3, "hidden": []}, "hidden"),
        ({"in_features": 3, "p_input": 1.0}, "p_input"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularMLP(**kwargs)


@pytest.mark.parametrize("name", ["plain", "l1", "l2", "dropout", "all"])
def test_cli_links_in_features_from_the_bank_datamodule(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lit-cv"])  # pytest's own arguments are not for the CLI
    csv = make_bank_kaggle(tmp_path / "bank", n=60)
    cli = LitCVCLI(
        args=[
            "--config",
            str(CONFIGS / f"bank_mlp_{name}.yaml"),
            "--data.init_args.data_dir",
            str(csv),
        ],
        run=False,
    )
    width = cli.datamodule.num_features
    first = next(m for m in cli.model.net.layers if isinstance(m, nn.Linear))
    assert cli.model.net.in_features == width == first.in_features
    # The linked value is part of the saved hyperparameters: the checkpoint rebuilds the same net.
    cli.trainer.strategy.connect(cli.model)
    path = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(path)
    reloaded = Classifier.load_from_checkpoint(path)
    assert reloaded.net.in_features == width
    assert reloaded.net(torch.ones(2, width)).shape == (2, 1)


def test_link_is_skipped_for_image_data_and_image_nets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lit-cv"])  # pytest's own arguments are not for the CLI
    cli = LitCVCLI(args=["--config", str(CONFIGS / "quickstart.yaml")], run=False)  # digits: no num_features
    assert not hasattr(cli.datamodule, "num_features")
    assert type(cli.model.net).__name__ == "CNN2"
    with pytest.raises(ValueError, match="in_features is not set"):
        LitCVCLI(
            args=["--config", str(CONFIGS / "quickstart.yaml"), "--model.net", "lit_cv.nets.TabularMLP"],
            run=False,
        )
