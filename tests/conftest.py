"""Settings for the whole suite: offline, quiet, deterministic."""

import os

import pytest

# No test may reach a model hub: a hub id fails at once instead of retrying DNS for ~50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread in every test: tiny models run no faster on more, a shared CPU runs
    them much slower, and the torchrun subprocess tests compare against runs made the same way."""
    try:
        import torch
    except ImportError:  # a checkout without rung-torch's dependencies
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
