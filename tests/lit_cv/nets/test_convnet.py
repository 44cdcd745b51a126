import pytest
import torch
from torch import nn

from lit_cv.nets import ConvNet, SqueezeExcite

MNIST = {"channels": [32, 64], "hidden": [128], "in_channels": 1, "num_classes": 10}
CATS_DOGS = {"channels": [32, 64, 128, 128], "hidden": [512], "in_channels": 3, "num_classes": 1}


@pytest.mark.parametrize(
    ("preset", "image_size"), [(MNIST, 28), (MNIST, 40), (CATS_DOGS, 224), (CATS_DOGS, 64)]
)
def test_output_shape_and_flattened_width(preset, image_size):
    net = ConvNet(**preset, image_size=image_size)
    x = torch.randn(2, preset["in_channels"], image_size, image_size)
    side = image_size // 2 ** len(preset["channels"])
    assert net.forward_features(x).shape == (2, preset["channels"][-1], side, side)
    first_fc = next(m for m in net.classifier if isinstance(m, nn.Linear))
    assert first_fc.in_features == preset["channels"][-1] * side * side
    out = net(x)
    assert out.shape == (2, preset["num_classes"])
    out.sum().backward()


def test_unit_is_conv_bn_relu_pool_and_parameter_count():
    net = ConvNet(channels=[4, 8], hidden=[16], in_channels=3, num_classes=2, image_size=8)
    unit = net.features[0]
    assert [type(m) for m in unit] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert (unit.conv.kernel_size, unit.conv.stride, unit.conv.padding) == ((3, 3), (1, 1), (1, 1))
    conv = (3 * 9 + 1) * 4 + 2 * 4 + (4 * 9 + 1) * 8 + 2 * 8
    fc = (8 * 2 * 2 + 1) * 16 + (16 + 1) * 2
    assert sum(p.numel() for p in net.parameters()) == conv + fc


def test_se_adds_a_gate_per_unit():
    net = ConvNet(channels=[8, 16], image_size=28, se=True, se_reduction=4)
    gates = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    assert [g.fc2.out_features for g in gates] == [8, 16]
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": [8, 8, 8], "image_size": 7}, "image_size >= 8"),
        ({"channels": []}, "channels"),
        ({"p": 1.0}, "dropout p"),
        ({"hidden": [0]}, "hidden"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvNet(**kwargs)


def test_input_of_another_size_names_both_sizes():
    net = ConvNet(channels=(4, 8), hidden=(), image_size=28)
    with pytest.raises(ValueError, match=r"built for image_size 28 but got 32x32 images. Build it with image_size=32"):
        net(torch.randn(2, 1, 32, 32))
