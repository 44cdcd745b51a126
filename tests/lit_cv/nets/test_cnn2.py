import pytest
import torch

from lit_cv.nets import CNN2


def test_course_parameter_count():
    assert sum(p.numel() for p in CNN2(n_feature=5).parameters()) == 6823


@pytest.mark.parametrize(
    ("image_size", "in_channels", "num_classes"), [(28, 3, 3), (28, 1, 10), (64, 3, 1), (10, 1, 2)]
)
def test_output_shape_and_featurizer_width(image_size, in_channels, num_classes):
    net = CNN2(n_feature=4, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    side = ((image_size - 2) // 2 - 2) // 2
    assert net.featurizer(x).shape == (2, 4 * side * side)
    assert net(x).shape == (2, num_classes)


def test_dropout_only_when_p_positive():
    net = CNN2(n_feature=5, p=0.0).train()
    x = torch.randn(4, 3, 28, 28)
    assert torch.equal(net(x), net(x))  # no dropout: deterministic in train mode
    noisy = CNN2(n_feature=5, p=0.5).train()
    assert not torch.equal(noisy(x), noisy(x))


@pytest.mark.parametrize(("kwargs", "match"), [({"image_size": 9}, "image_size >= 10"), ({"p": 1.0}, "dropout p"),
                                               ({"n_feature": 0}, "n_feature")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNN2(**kwargs)


def test_input_of_another_size_names_both_sizes():
    """Before: a raw "mat1 and mat2 shapes cannot be multiplied" from the first linear layer."""
    net = CNN2(n_feature=4, image_size=28)
    with pytest.raises(ValueError, match=r"built for image_size 28 but got 32x32 images. Build it with image_size=32"):
        net(torch.randn(2, 3, 32, 32))
    assert net(torch.randn(2, 3, 29, 29)).shape == (2, 3)  # 29 px give the same feature map as 28: accepted
