"""Noise, MSE and PSNR conventions."""

import math

import pytest
import torch

from ae_core.config import ModelConfig
from ae_core.metrics import (PSNR_CAP_DB, add_noise, apply_fixed_noise, eval_standard_normal, gaussian_noise,
                             psnr_per_image)
from ae_core.model import Autoencoder
from ae_core.train import evaluate


@pytest.mark.parametrize("noise_var", [0.1, 0.25, 0.5, 1.0])
def test_noise_variance_matches_parameter(noise_var):
    generator = torch.Generator().manual_seed(1)
    e = gaussian_noise((2000, 784), noise_var, generator)
    measured = float(e.double().var())
    assert abs(measured - noise_var) / noise_var < 0.02
    assert abs(float(e.double().mean())) < 0.01


def test_add_noise_small_variance_barely_clipped():
    x = torch.full((2000, 784), 0.5)
    x_noisy = add_noise(x, 0.01, torch.Generator().manual_seed(2))
    measured = float((x_noisy - x).double().var())
    assert abs(measured - 0.01) / 0.01 < 0.02


def test_add_noise_clips_to_unit_range():
    x = torch.rand(100, 784)
    x_noisy = add_noise(x, 1.0, torch.Generator().manual_seed(3))
    assert float(x_noisy.min()) >= 0.0
    assert float(x_noisy.max()) <= 1.0


def test_zero_variance_is_identity():
    x = torch.rand(10, 784)
    assert torch.equal(add_noise(x, 0.0), x)
    assert torch.equal(apply_fixed_noise(x, eval_standard_normal(x.shape), 0.0), x)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_invalid_variance_rejected(bad):
    with pytest.raises(ValueError, match="noise_var"):
        add_noise(torch.rand(2, 784), bad)


def test_evaluation_noise_is_fixed():
    first = eval_standard_normal((50, 784))
    second = eval_standard_normal((50, 784))
    assert torch.equal(first, second)


def test_psnr_known_value():
    x = torch.zeros(3, 784)
    x_hat = torch.full((3, 784), 0.1)  # MSE 0.01
    assert psnr_per_image(x, x_hat).tolist() == pytest.approx([20.0] * 3, abs=1e-5)  # 0.1 is inexact in float32


def test_psnr_identical_images_capped():
    x = torch.rand(4, 784)
    psnr = psnr_per_image(x, x.clone())
    assert torch.isfinite(psnr).all()
    assert psnr.tolist() == [PSNR_CAP_DB] * 4


def test_mean_psnr_is_mean_of_per_image_values():
    x = torch.zeros(2, 784)
    x_hat = torch.stack([torch.full((784,), 0.1), torch.full((784,), 0.01)])  # 20 dB and 40 dB
    model = _FixedOutput(x_hat)
    scores = evaluate(model, x, batch_size=2)
    assert scores["test_psnr"] == pytest.approx(30.0, abs=1e-6)
    # the PSNR of the mean MSE would be about 23 dB: that is not what is reported
    assert scores["test_loss"] == pytest.approx((0.01 + 0.0001) / 2, rel=1e-5)


class _FixedOutput(torch.nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x):
        return self.output[: x.shape[0]]


@pytest.mark.parametrize("noise_var", [0.0, 0.5])
def test_evaluate_independent_of_batch_size(noise_var):
    model = Autoencoder(ModelConfig.make(latent_dim=15)).eval()
    x = torch.rand(300, 784, generator=torch.Generator().manual_seed(5))
    small = evaluate(model, x, noise_var, batch_size=1)
    large = evaluate(model, x, noise_var, batch_size=256)
    for key in ("test_loss", "test_psnr"):
        assert small[key] == pytest.approx(large[key], rel=1e-9, abs=1e-9)
    if noise_var:
        assert small["noisy_psnr"] == pytest.approx(large["noisy_psnr"], rel=1e-9)
    else:
        assert small["noisy_psnr"] is None
