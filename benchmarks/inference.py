"""Inference: reconstructing the 16 images a page shows, and evaluating the whole test set."""

import torch

from ae_core.config import ModelConfig
from ae_core.data import DatasetSplits
from ae_core.metrics import eval_standard_normal
from ae_core.model import Autoencoder
from ae_core.store import CheckpointStore
from ae_core.train import evaluate

from .machine import calls_for, median_seconds

SHOWN_IMAGES = 16
NOISE_VAR = 0.5


def load_or_build(config: ModelConfig, store: CheckpointStore) -> tuple[torch.nn.Module, str]:
    """Return the cached model of config, else a freshly initialised one, which takes the same time."""
    trained = store.load(config)
    if trained is not None:
        return trained.model, "checkpoint"
    model = Autoencoder(config)
    model.eval()
    return model, "untrained (no checkpoint)"


def measure(config: ModelConfig, data: DatasetSplits, store: CheckpointStore, repeats: int) -> dict:
    """Time a 16-image forward pass and evaluate() on the test set, clean and with noise."""
    model, source = load_or_build(config, store)
    shown = data.test_x[:SHOWN_IMAGES]

    def reconstruct():
        with torch.inference_mode():
            model(shown)

    reconstruct_s = median_seconds(reconstruct, repeats * 5, calls_for(reconstruct, 0.05))

    standard_normal = eval_standard_normal(data.test_x.shape)
    evaluate(model, data.test_x)  # warm-up
    evaluate_s = median_seconds(lambda: evaluate(model, data.test_x), repeats)
    evaluate_noisy_s = median_seconds(lambda: evaluate(model, data.test_x, NOISE_VAR, standard_normal), repeats)
    return {
        "stem": config.stem,
        "weights": source,
        "reconstruct_16_ms": reconstruct_s * 1e3,
        "evaluate_test_set_ms": evaluate_s * 1e3,
        "evaluate_test_set_noisy_ms": evaluate_noisy_s * 1e3,
        "test_images": int(data.test_x.shape[0]),
        "noise_var": NOISE_VAR,
        "repeats": repeats,
    }
