"""Net tests run small convolutions: one intra-op thread avoids 10-15x slowdowns when other processes share the
2 cores (torch's two threads then spin against each other)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
