"""Fixtures shared by test modules (use them by name; none applies by itself)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is faster on a shared 2-core machine; restored after the
    module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
