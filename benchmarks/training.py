"""Training throughput: the engine's train_model against a textbook loop on the same model.

Both loops train Autoencoder(config) from the same seed with the same objective (mean per-pixel
MSE plus lambda times l1_penalty) at the same batch size and torch thread count. The engine keeps
the whole training set as one float tensor and uses fused Adam. The textbook loop reads MNIST
through torchvision's dataset class with ToTensor and a shuffling DataLoader (no worker
processes, its default), flattens each batch and uses plain torch.optim.Adam.
"""

import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from ae_core.config import ModelConfig
from ae_core.data import DatasetSplits
from ae_core.model import Autoencoder, l1_penalty
from ae_core.train import train_model

from .flops import executed_training_flops, training_flops, training_gemms
from .machine import torch_threads

# The architectures compared: the default model (depth 3, latent 100) and the deep, narrow-code one
# (depth 5, latent 15), which has more layers but smaller GEMMs.
COMPARED = ((3, 100), (5, 15))

# train_model evaluates the test set after its epoch, outside the timed steps. A subset keeps that short.
EVAL_IMAGES = 1000


def time_engine(config: ModelConfig, data: DatasetSplits, warmup: int, steps: int) -> float:
    """Return the seconds that train_model spends on `steps` steps after `warmup` steps.

    The training set is cut to exactly warmup + steps batches, so the timed steps end the epoch.
    The progress callback stamps the clock after step `warmup` and after the last step.
    """
    report_every = math.gcd(warmup, steps)
    subset = data.subset((warmup + steps) * config.batch_size, EVAL_IMAGES)
    stamps = {}

    def on_progress(progress) -> None:
        if progress.kind == "step":
            stamps[progress.step] = time.perf_counter()

    train_model(config.with_(epochs=1), subset, callback=on_progress, step_report_every=report_every)
    return stamps[warmup + steps] - stamps[warmup]


def time_reference(config: ModelConfig, data_root: Path, warmup: int, steps: int) -> float:
    """Return the seconds a textbook loop spends on `steps` steps after `warmup` steps (MNIST only)."""
    torch.manual_seed(config.seed)
    dataset = torchvision.datasets.MNIST(str(data_root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    if warmup + steps > len(loader):
        raise ValueError(f"warm-up plus timed steps must fit in one epoch of {len(loader)} batches, "
                         f"got {warmup} + {steps}")

    model = Autoencoder(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    lasso = config.strength if config.regularizer == "lasso" else 0.0
    model.train()

    running_loss = 0.0
    started = None
    for step, (images, _labels) in enumerate(loader):
        if step == warmup:
            started = time.perf_counter()
        if step == warmup + steps:
            break
        x = images.view(images.size(0), -1)
        loss = F.mse_loss(model(x), x) + lasso * l1_penalty(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - started


def compare(config: ModelConfig, data: DatasetSplits, data_root: Path, warmup: int, steps: int,
            repeats: int, gemm_timer, threads: int) -> dict:
    """Time engine and reference `repeats` times each, alternating, and relate both to the GEMM rate."""
    engine_runs, reference_runs = [], []
    for _ in range(repeats):
        engine_runs.append(time_engine(config, data, warmup, steps))
        reference_runs.append(time_reference(config, data_root, warmup, steps))
    engine_s = statistics.median(engine_runs)
    reference_s = statistics.median(reference_runs)

    images = steps * config.batch_size
    flops_per_image = training_flops(config.depth, config.latent_dim)
    gemm = gemm_timer.rate(training_gemms(config.depth, config.latent_dim, config.batch_size), threads)
    engine_gflops = images * flops_per_image / engine_s / 1e9

    # time of the GEMMs autograd really runs in one step: all but the first layer's input gradient,
    # which is the second entry of training_gemms()
    executed = gemm["shapes"][:1] + gemm["shapes"][2:]
    gemm_step_s = sum(row["seconds"] for row in executed)
    engine_step_s = engine_s / steps

    # the sweep's workers train with one thread each, so the single-thread figures matter as well
    single = {}
    if threads != 1:
        with torch_threads(1):
            single_s = statistics.median([time_engine(config, data, warmup, steps) for _ in range(repeats)])
        single_gemm = gemm_timer.rate(training_gemms(config.depth, config.latent_dim, config.batch_size), 1)
        single_gflops = images * flops_per_image / single_s / 1e9
        single = {"engine_images_per_s": images / single_s, "engine_gflops": single_gflops,
                  "gemm_gflops": single_gemm["gflops"], "fraction_of_gemm": single_gflops / single_gemm["gflops"]}

    return {
        "depth": config.depth,
        "latent_dim": config.latent_dim,
        "regularizer": config.regularizer,
        "batch_size": config.batch_size,
        "threads": threads,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "repeats": repeats,
        "flops_per_image_training": flops_per_image,
        "flops_per_image_executed": executed_training_flops(config.depth, config.latent_dim),
        "engine_seconds": engine_runs,
        "reference_seconds": reference_runs,
        "engine_step_ms": engine_step_s * 1e3,
        "reference_step_ms": reference_s / steps * 1e3,
        "engine_images_per_s": images / engine_s,
        "reference_images_per_s": images / reference_s,
        "speedup": reference_s / engine_s,
        "engine_gflops": engine_gflops,
        "reference_gflops": images * flops_per_image / reference_s / 1e9,
        "gemm": gemm,
        "fraction_of_gemm": engine_gflops / gemm["gflops"],
        "gemm_ms_per_step_executed": gemm_step_s * 1e3,
        "gemm_share_of_step": gemm_step_s / engine_step_s,
        "one_thread": single,
    }
