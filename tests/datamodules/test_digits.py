import pytest
import torch

from datamodules import DigitsDataModule


def _labels(dataset):
    return [int(dataset[i][1]) for i in range(len(dataset))]


def test_shapes_split_and_class_counts():
    dm = DigitsDataModule(image_size=28, val_split=0.2)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797 and len(dm.val_set) == 359
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert sorted(set(_labels(dm.train_set))) == list(range(10))


def test_split_is_disjoint_and_deterministic():
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert set(a.train_set.indices).isdisjoint(a.val_set.indices)
    assert a.val_set.indices == b.val_set.indices
    assert a.val_set.indices != c.val_set.indices


def test_setup_twice_does_not_resplit():
    dm = DigitsDataModule()
    dm.setup("fit")
    first = dm.val_set
    dm.setup("test")
    assert dm.val_set is first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"val_split": 1.0}, "val_split"), ({"image_size": 4}, "image_size"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_predict_ids_are_load_digits_indices():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(image_size=8)
    ids = dm.predict_ids()
    assert len(ids) == len(dm.val_set)
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0
    x = torch.stack([dm.val_set[i][0][0] for i in range(5)])
    assert torch.allclose(x, images[ids[:5]])
