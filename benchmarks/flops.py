"""FLOP counting from the layer shapes, and the GEMM rate of the machine at those shapes.

Counting convention: a multiply-add is 2 FLOPs, so one image's forward pass costs
2 x count_macs FLOPs. A training step is counted as 3 forward passes: the forward GEMM of each
Linear layer, plus two backward GEMMs of the same size (gradient of the input, gradient of the
weight). Biases, activations, the loss, the L1 term and Adam are not counted. Autograd skips
the input gradient of the first layer because the images need no gradient, so the GEMMs it
really runs add up to less than the 3x count, and executed_training_flops() gives that figure.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ae_core.config import ModelConfig
from ae_core.model import Autoencoder, count_macs

from .machine import calls_for, median_seconds, torch_threads


@dataclass(frozen=True)
class Gemm:
    """One matrix product (m x k) @ (k x n) of a Linear layer at a given batch size."""

    role: str  # "forward", "grad_input" or "grad_weight"
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def linear_shapes(depth: int, latent_dim: int) -> list[tuple[int, int]]:
    """Return (in_features, out_features) of every Linear layer, encoder first, read from the model."""
    model = Autoencoder(ModelConfig.make(depth=depth, latent_dim=latent_dim))
    shapes = [(layer.in_features, layer.out_features) for layer in model.modules() if isinstance(layer, nn.Linear)]
    if sum(n_in * n_out for n_in, n_out in shapes) != count_macs(depth, latent_dim):
        raise AssertionError(f"layer shapes {shapes} do not match count_macs({depth}, {latent_dim})")
    return shapes


def forward_flops(depth: int, latent_dim: int) -> int:
    """FLOPs of one image's forward pass: 2 x multiply-adds."""
    return 2 * count_macs(depth, latent_dim)


def training_flops(depth: int, latent_dim: int) -> int:
    """FLOPs of one image's training step by the 3x-forward convention."""
    return 3 * forward_flops(depth, latent_dim)


def executed_training_flops(depth: int, latent_dim: int) -> int:
    """FLOPs per image of the GEMMs autograd really runs: 3x forward minus the first layer's input gradient."""
    n_in, n_out = linear_shapes(depth, latent_dim)[0]
    return training_flops(depth, latent_dim) - 2 * n_in * n_out


def training_gemms(depth: int, latent_dim: int, batch_size: int) -> list[Gemm]:
    """Return the three GEMMs of every Linear layer in one training step (the 3x convention)."""
    gemms = []
    for n_in, n_out in linear_shapes(depth, latent_dim):
        gemms.append(Gemm("forward", batch_size, n_in, n_out))  # x (B, in) @ W.T (in, out)
        gemms.append(Gemm("grad_input", batch_size, n_out, n_in))  # dy (B, out) @ W (out, in)
        gemms.append(Gemm("grad_weight", n_out, batch_size, n_in))  # dy.T (out, B) @ x (B, in)
    return gemms


def _operands(gemm: Gemm) -> tuple:
    """Build operands with the memory layouts autograd uses for a Linear layer, plus an output buffer."""
    generator = torch.Generator().manual_seed(0)
    if gemm.role == "forward":
        x = torch.rand(gemm.m, gemm.k, generator=generator)
        weight = torch.rand(gemm.n, gemm.k, generator=generator)
        a, b = x, weight.t()
    elif gemm.role == "grad_input":
        grad_y = torch.rand(gemm.m, gemm.k, generator=generator)
        weight = torch.rand(gemm.k, gemm.n, generator=generator)
        a, b = grad_y, weight
    else:
        grad_y = torch.rand(gemm.k, gemm.m, generator=generator)
        x = torch.rand(gemm.k, gemm.n, generator=generator)
        a, b = grad_y.t(), x
    return a, b, torch.empty(gemm.m, gemm.n)


class GemmTimer:
    """Seconds per torch.mm call at a shape and thread count, measured once and then reused."""

    def __init__(self, block_s: float = 0.05, repeats: int = 7):
        self.block_s = block_s
        self.repeats = repeats
        self._seconds: dict[tuple, float] = {}

    def seconds(self, gemm: Gemm, threads: int) -> float:
        key = (gemm.role, gemm.m, gemm.k, gemm.n, threads)
        if key not in self._seconds:
            a, b, out = _operands(gemm)

            def run():
                torch.mm(a, b, out=out)

            with torch_threads(threads):
                calls = calls_for(run, self.block_s)
                self._seconds[key] = median_seconds(run, self.repeats, calls)
        return self._seconds[key]

    def rate(self, gemms: list[Gemm], threads: int) -> dict:
        """Time a set of GEMMs. The rate is FLOP-weighted: total FLOPs over total time."""
        rows = []
        for gemm in gemms:
            seconds = self.seconds(gemm, threads)
            rows.append({"role": gemm.role, "m": gemm.m, "k": gemm.k, "n": gemm.n,
                         "seconds": seconds, "gflops": gemm.flops / seconds / 1e9})
        total_flops = sum(g.flops for g in gemms)
        total_seconds = sum(row["seconds"] for row in rows)
        return {"threads": threads, "flops": total_flops, "seconds": total_seconds,
                "gflops": total_flops / total_seconds / 1e9, "shapes": rows}
