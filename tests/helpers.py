"""Shared pieces of the dashboard tests: tiny trained models and a free local port."""

import contextlib
import socket
from pathlib import Path

import torch

from ae_core.config import ModelConfig
from ae_core.data import load_dataset
from ae_core.store import CheckpointStore

# The tiny models train for one epoch on the first 12,000 real training images, so the fixture
# costs seconds instead of a minute on a 2-core CPU; their metrics still cover the full test set.
TINY_TRAIN_IMAGES = 12_000

TINY_LASSO = ModelConfig.make(regularizer="lasso", dataset="mnist", depth=3, latent_dim=15, epochs=1)
TINY_DROPOUT = TINY_LASSO.with_(regularizer="dropout", strength=0.2)
TINY_DENOISER = TINY_LASSO.with_(noise_var=0.25)
TINY_CONFIGS = (TINY_LASSO, TINY_DROPOUT, TINY_DENOISER)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one intra-op thread, then restore the previous count.

    Tiny models gain nothing from more threads, and on a CPU shared with other processes two
    threads per process made a forward pass of a 128-image batch up to 10 times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_tiny_models(checkpoint_dir: Path, data_dir: Path, configs=TINY_CONFIGS) -> list[str]:
    """Train the tiny configurations into checkpoint_dir through the store; return how each was obtained."""
    splits = load_dataset("mnist", data_dir).subset(TINY_TRAIN_IMAGES, 10_000)
    store = CheckpointStore(checkpoint_dir)
    with one_torch_thread():
        return [store.get_or_train(config, lambda: splits)[1] for config in configs]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
