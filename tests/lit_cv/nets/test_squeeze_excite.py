import pytest
import torch

from lit_cv.nets import SqueezeExcite


@pytest.mark.parametrize(("channels", "reduction", "hidden"), [(64, 16, 4), (8, 16, 1), (32, 4, 8)])
def test_bottleneck_width_is_clamped(channels, reduction, hidden):
    se = SqueezeExcite(channels, reduction)
    assert se.fc1.out_features == hidden
    assert se.fc2.out_features == channels


def test_output_is_input_times_independent_gate():
    torch.manual_seed(0)
    se = SqueezeExcite(12, reduction=4)
    x = torch.randn(3, 12, 5, 7)
    # Gate recomputed by hand from the weights: pool -> fc1 -> relu -> fc2 -> sigmoid.
    pooled = x.flatten(2).mean(-1)
    hidden = torch.clamp(pooled @ se.fc1.weight.T + se.fc1.bias, min=0)
    gate = torch.sigmoid(hidden @ se.fc2.weight.T + se.fc2.bias)
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(se.gate(x).squeeze(-1).squeeze(-1), gate, atol=1e-6)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


def test_gate_is_per_sample_and_per_channel():
    se = SqueezeExcite(4, reduction=1)
    x = torch.randn(2, 4, 3, 3)
    assert se.gate(x).shape == (2, 4, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"channels": 0}, "channels"), ({"channels": 4, "reduction": 0}, "reduction")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SqueezeExcite(**kwargs)
