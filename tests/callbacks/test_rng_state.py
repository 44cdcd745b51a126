"""callbacks.RNGState: the generators' states go into the checkpoint and come back after the sanity check."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from callbacks.rng_state import RNGState, collect_rng_states


def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_restores_every_generator_after_the_sanity_check() -> None:
    callback = RNGState()
    saved = callback.state_dict()
    expected = _draw()

    resumed = RNGState()
    resumed.load_state_dict(saved)
    _draw()  # the resumed run's sanity check draws too
    resumed.on_sanity_check_end(None, None)  # type: ignore[arg-type]
    got = _draw()
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2])
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    assert resumed._pending is None  # applied once only


def test_rng_states_load_with_weights_only() -> None:
    buffer = io.BytesIO()
    torch.save(RNGState().state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert torch.equal(loaded["rng"]["torch"], collect_rng_states()["torch"])
