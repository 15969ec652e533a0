"""Gaussian noise, MSE and PSNR, with the project's conventions stated once here.

Conventions:
- Images are float tensors in [0, 1], so the PSNR data range is 1: PSNR = 10 log10(1 / MSE).
- `noise_var` is the variance of the added Gaussian noise, never its standard deviation.
- MSE and PSNR are computed per image; a reported mean PSNR is the mean of per-image PSNR values,
  which is not the PSNR of the mean MSE.
- Two identical images have MSE 0 and infinite PSNR. Their PSNR is capped at PSNR_CAP_DB so that
  means and charts stay finite; the cap is far above any PSNR a reconstruction reaches here.
"""

import math

import torch

PSNR_CAP_DB = 100.0  # reported for MSE <= 1e-10, including identical images

# Evaluation noise comes from this seed, so the same test image always gets the same noise.
EVAL_NOISE_SEED = 20_240_601


def gaussian_noise(shape, noise_var: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Draw e ~ N(0, noise_var): noise_var is the variance, so the standard deviation is its root."""
    if not math.isfinite(noise_var) or noise_var < 0:
        raise ValueError(f"noise_var must be a finite number >= 0, got {noise_var}")
    if generator is not None:
        device = generator.device
    return torch.randn(shape, generator=generator, device=device) * math.sqrt(noise_var)


def add_noise(x: torch.Tensor, noise_var: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return clip(x + e, 0, 1) with e ~ N(0, noise_var); x itself when noise_var is 0."""
    if noise_var == 0:
        return x
    e = gaussian_noise(x.shape, noise_var, generator, device=x.device)
    return (x + e.to(x.device)).clamp_(0.0, 1.0)


def apply_fixed_noise(x: torch.Tensor, standard_normal: torch.Tensor, noise_var: float) -> torch.Tensor:
    """Return clip(x + sqrt(noise_var) * standard_normal, 0, 1), for noise drawn once and reused."""
    if noise_var == 0:
        return x
    return (x + standard_normal * math.sqrt(noise_var)).clamp(0.0, 1.0)


def eval_standard_normal(shape, seed: int = EVAL_NOISE_SEED) -> torch.Tensor:
    """Draw the fixed N(0, 1) evaluation noise for `shape` (rows = test images, in order)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def mse_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image, in float64: shape (B,)."""
    diff = x.reshape(x.shape[0], -1).double() - x_hat.reshape(x_hat.shape[0], -1).double()
    return diff.pow(2).mean(dim=1)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1, capped at PSNR_CAP_DB for (near) zero MSE."""
    floor = 10.0 ** (-PSNR_CAP_DB / 10.0)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(floor))


def psnr_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """PSNR of each image in dB (data range 1, capped): shape (B,)."""
    return psnr_from_mse(mse_per_image(x, x_hat))
