"""Training on small subsets of the real datasets."""

import pytest
import torch

from ae_core.config import ModelConfig
from ae_core.data import load_dataset
from ae_core.model import Autoencoder
from ae_core.store import CheckpointStore
from ae_core.train import TrainingCancelled, evaluate, train_model


@pytest.fixture(scope="module")
def mnist_small(data_dir):
    return load_dataset("mnist", data_dir).subset(3000, 1000)


@pytest.fixture(scope="module")
def fashion_small(data_dir):
    return load_dataset("fashion-mnist", data_dir).subset(3000, 1000)


@pytest.mark.parametrize("regularizer", ["lasso", "dropout", "none"])
def test_training_lowers_test_loss(mnist_small, regularizer):
    config = ModelConfig.make(regularizer=regularizer, latent_dim=30, epochs=2)
    untrained = evaluate(Autoencoder(config), mnist_small.test_x)["test_loss"]
    result = train_model(config, mnist_small)
    assert result.metrics["test_loss"] < 0.7 * untrained
    assert result.history[1]["test_loss"] < result.history[0]["test_loss"]
    assert len(result.history) == 2
    assert not result.model.training


def test_denoiser_beats_noisy_input(fashion_small):
    config = ModelConfig.make(latent_dim=50, noise_var=0.25, epochs=2)
    result = train_model(config, fashion_small)
    assert result.metrics["noisy_psnr"] is not None
    assert result.metrics["test_psnr"] > result.metrics["noisy_psnr"]


def test_same_seed_same_result(mnist_small):
    config = ModelConfig.make(regularizer="dropout", latent_dim=15, epochs=1)
    data = mnist_small.subset(1000, 200)
    first = train_model(config, data)
    second = train_model(config, data)
    other = train_model(config.with_(seed=1), data)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.metrics["test_loss"] == second.metrics["test_loss"]
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(), second.model.parameters()))
    assert other.metrics["test_loss"] != first.metrics["test_loss"]


def test_callback_reports_steps_and_epochs(mnist_small):
    config = ModelConfig.make(latent_dim=15, epochs=2, batch_size=256)
    data = mnist_small.subset(1024, 200)
    reports = []
    train_model(config, data, callback=reports.append, step_report_every=1)
    steps = [r for r in reports if r.kind == "step"]
    epochs = [r for r in reports if r.kind == "epoch"]
    assert len(steps) == 2 * 4  # 1024 images at batch 256, two epochs
    assert [r.epoch for r in epochs] == [1, 2]
    assert epochs[-1].fraction == 1.0
    assert len(epochs[-1].history) == 2


def test_cancel_raises_and_saves_nothing(mnist_small, tmp_path):
    config = ModelConfig.make(latent_dim=15, epochs=3)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 5

    store = CheckpointStore(tmp_path)
    with pytest.raises(TrainingCancelled):
        store.get_or_train(config, lambda: mnist_small, should_stop=should_stop)
    assert not store.path(config).exists()
    assert list(tmp_path.glob("*.pt")) == []
