import pytest
import torch

from lit_cv.nets import DenseNet, SqueezeExcite
from lit_cv.nets.densenet import _DenseBlock, _Transition


@pytest.mark.parametrize(("num_layers", "growth", "bn_size"), [(1, 4, None), (3, 6, 4), (5, 12, 2)])
def test_dense_block_adds_layers_times_growth_channels(num_layers, growth, bn_size):
    block = _DenseBlock(num_layers, 10, growth, bn_size, se=False, se_reduction=16)
    x = torch.randn(2, 10, 9, 9)
    y = block(x)
    assert y.shape == (2, 10 + num_layers * growth, 9, 9)
    torch.testing.assert_close(y[:, :10], x)  # the block input is passed through by the concatenation
    assert block.out_channels == 10 + num_layers * growth


def test_each_layer_sees_all_previous_features():
    block = _DenseBlock(3, 5, 2, bn_size=None, se=False, se_reduction=16)
    assert [layer.layers[0].num_features for layer in block.layers] == [5, 7, 9]
    assert [layer.layers[-1].out_channels for layer in block.layers] == [2, 2, 2]


def test_bottleneck_conv_width():
    block = _DenseBlock(1, 8, 6, bn_size=4, se=False, se_reduction=16)
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.in_channels, c.out_channels) for c in convs] == [
        ((1, 1), 8, 24),
        ((3, 3), 24, 6),
    ]


def test_transition_halves_channels_and_side():
    y = _Transition(20, 10)(torch.randn(2, 20, 14, 14))
    assert y.shape == (2, 10, 7, 7)


@pytest.mark.parametrize(
    ("image_size", "blocks", "side"),
    [(28, [2, 2, 2], 7), (32, [2, 2], 16), (224, [2, 2, 2, 2], 7), (112, [1, 1], 14)],
)
def test_output_shape_and_feature_width(image_size, blocks, side):
    growth, init = 6, 12
    net = DenseNet(
        block_layers=blocks, growth_rate=growth, init_channels=init, image_size=image_size, num_classes=4
    )
    width = init
    for i, n in enumerate(blocks):
        width += n * growth
        if i < len(blocks) - 1:
            width //= 2
    x = torch.randn(2, 3, image_size, image_size)
    assert net.forward_features(x).shape == (2, width, side, side)
    assert net.num_features == width
    out = net(x)
    assert out.shape == (2, 4)
    out.sum().backward()


def test_se_gate_at_end_of_every_block():
    net = DenseNet(block_layers=[2, 2], growth_rate=4, init_channels=8, se=True, se_reduction=16)
    gates = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    # block 1: 8 + 2*4 = 16 channels, transition -> 8, block 2: 8 + 2*4 = 16; 16 // 16 = 1 hidden unit.
    assert [(g.fc1.in_features, g.fc1.out_features) for g in gates] == [(16, 1), (16, 1)]
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_layers": [1] * 6, "image_size": 28}, "smaller than 1 pixel"),
        ({"block_layers": []}, "block_layers"),
        ({"growth_rate": 0}, "growth_rate"),
        ({"p": 1.5}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenseNet(**kwargs)
