import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from lit_cv.nets import TransferNet
from lit_cv.nets.transfer import frozen_param_names

TINY = "test_resnet"  # timm's 0.4M-parameter ResNet with BatchNorm; stages act1, layer1..layer4


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
    monkeypatch.setattr("lit_cv.nets.transfer._in_hf_cache", lambda repo_id: False)
    with pytest.raises(FileNotFoundError) as info:
        TransferNet("resnet18", pretrained=True)
    message = str(info.value)
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert "hf download timm/resnet18.a1_in1k model.safetensors" in message
    assert "pretrained: /path/to/model.safetensors" in message


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
