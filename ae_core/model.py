"""Fully-connected autoencoder with an encoder of 3 or 5 Linear layers and a mirrored decoder.

Hidden widths: the first hidden layer has 256 units and every later hidden layer 128. Each hidden
layer is then at least as wide as the largest latent size of the grid (100), so the latent layer
is the network's narrowest point for every grid configuration, and a larger latent size really
passes more information. Latent sizes above 128 are allowed but then a hidden layer is narrower
than the code. Widths stay small because training runs on laptop CPUs: the depth-3 model at
latent size 100 costs about 0.49 M multiply-adds per image and forward pass.

Randomness (initial weights and dropout masks) comes from a torch.Generator owned by the model,
never from the global RNG, so models trained at the same time in several threads stay
reproducible.
"""

import math

import torch
from torch import nn

from .config import IMAGE_SIZE, ModelConfig

HIDDEN_WIDTHS = {3: (256, 128), 5: (256, 128, 128, 128)}


def layer_widths(depth: int, latent_dim: int) -> list[int]:
    """Return the encoder's widths from the input to the latent layer: depth + 1 numbers."""
    return [IMAGE_SIZE, *HIDDEN_WIDTHS[depth], latent_dim]


class SeededDropout(nn.Module):
    """Inverted dropout of rate p whose masks come from the owning model's generator."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=self.generator.device) >= self.p
        return x * keep.to(x.device) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _mlp(widths: list[int], dropout: float, last_activation: nn.Module, generator: torch.Generator) -> nn.Sequential:
    """Stack Linear layers with ReLU (then dropout, when p > 0) after each hidden one."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i == len(widths) - 2:
            layers.append(last_activation)
            continue
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(SeededDropout(dropout, generator))
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Encoder 784 -> hidden -> latent (linear code), decoder latent -> hidden -> 784 (sigmoid)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        widths = layer_widths(config.depth, config.latent_dim)
        dropout = config.strength if config.regularizer == "dropout" else 0.0
        self.encoder = _mlp(widths, dropout, nn.Identity(), self.generator)
        self.decoder = _mlp(widths[::-1], dropout, nn.Sigmoid(), self.generator)
        self._init_weights()

    def _init_weights(self) -> None:
        # The same distributions as nn.Linear's own reset_parameters (PyTorch 2.x), drawn from
        # the model's generator instead of the global one.
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=self.generator)
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=self.generator)

    def move_generator(self, device: torch.device) -> None:
        """Give dropout a generator on `device`, seeded from the current one, for GPU training."""
        if device.type == "cpu":
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        generator = torch.Generator(device=device).manual_seed(seed)
        for layer in self.modules():
            if isinstance(layer, SeededDropout):
                layer.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)  # (B, latent_dim)
        return self.decoder(z)  # (B, 784), in (0, 1)


def l1_penalty(model: Autoencoder) -> torch.Tensor:
    """Sum of absolute values of the encoder's Linear weights; biases are excluded.

    The sum is not divided by the batch size, so the Lasso term is the same at any batch size.
    """
    weights = [m.weight for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    return torch.stack([w.abs().sum() for w in weights]).sum()


def count_macs(depth: int, latent_dim: int) -> int:
    """Multiply-adds of one image's forward pass through encoder and decoder."""
    widths = layer_widths(depth, latent_dim)
    encoder = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2 * encoder
