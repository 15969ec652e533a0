"""The sweep: train every grid configuration not yet cached, then the best ones as denoisers.

Phase 1 trains datasets x depths x latent sizes x regularizers plain autoencoders (32 with the
defaults). Phase 2 takes, per dataset, the phase-1 configuration with the lowest test
reconstruction loss and trains it as a denoiser at each noise variance (10 more). Both phases go
through CheckpointStore.get_or_train, so a second sweep only loads.
"""

import csv
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DATASETS, DEPTHS, LATENT_GRID, NOISE_VARS, ModelConfig, grid_configs
from .data import load_dataset
from .store import CheckpointStore

logger = logging.getLogger(__name__)

GRID_COLUMNS = ["dataset", "depth", "latent_dim", "regularizer", "strength", "noise_var", "epochs",
                "train_loss", "test_loss", "test_psnr", "noisy_psnr", "seconds", "source"]


@dataclass
class SweepPlan:
    datasets: tuple = DATASETS
    depths: tuple = DEPTHS
    latents: tuple = LATENT_GRID
    regularizers: tuple = ("lasso", "dropout")
    noise_vars: tuple = NOISE_VARS
    epochs: int = 10
    seed: int = 0
    denoise: bool = True  # phase 2 on or off


@dataclass
class SweepResult:
    rows: list = field(default_factory=list)  # one dict per configuration, GRID_COLUMNS keys
    best: dict = field(default_factory=dict)  # (dataset, regularizer) -> row with the lowest test_loss
    denoising: dict = field(default_factory=dict)  # dataset -> rows of phase 2, by noise_var
    seconds: float = 0.0


_worker_data: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_one(config: ModelConfig, checkpoint_dir: str, data_dir: str | None, device: str) -> dict:
    """Worker body: load or train one configuration and return its table row."""
    store = CheckpointStore(checkpoint_dir)

    def data_loader():
        if config.dataset not in _worker_data:
            _worker_data[config.dataset] = load_dataset(config.dataset, data_dir)
        return _worker_data[config.dataset]

    trained, how = store.get_or_train(config, data_loader, device=device)
    return _row(trained.config, trained.metrics, how)


def _row(config: ModelConfig, metrics: dict, source: str) -> dict:
    return {
        "dataset": config.dataset, "depth": config.depth, "latent_dim": config.latent_dim,
        "regularizer": config.regularizer, "strength": config.strength, "noise_var": config.noise_var,
        "epochs": config.epochs, "train_loss": metrics.get("train_loss"), "test_loss": metrics.get("test_loss"),
        "test_psnr": metrics.get("test_psnr"), "noisy_psnr": metrics.get("noisy_psnr"),
        "seconds": metrics.get("seconds"), "source": source,
    }


def _run_phase(configs: list, checkpoint_dir: str, data_dir, device: str, workers: int, threads: int,
               on_done=None) -> list:
    """Train or load configs with `workers` processes of `threads` threads each; rows in input order."""
    rows: dict[int, dict] = {}
    if workers <= 1:
        torch.set_num_threads(threads)
        for i, config in enumerate(configs):
            rows[i] = _train_one(config, checkpoint_dir, data_dir, device)
            if on_done:
                on_done(rows[i])
        return [rows[i] for i in range(len(configs))]

    # spawn, not fork: a forked child would inherit torch's thread pools in an undefined state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(_train_one, c, checkpoint_dir, data_dir, device): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            if on_done:
                on_done(rows[futures[future]])
    return [rows[i] for i in range(len(configs))]


def default_workers() -> tuple[int, int]:
    """Return (workers, threads per worker): one single-threaded worker per core.

    Small models keep one core busy at batch 128, so separate processes beat threads of one
    process here (benchmarks/run.py measures both).
    """
    cores = os.cpu_count() or 1
    return cores, 1


def run_sweep(plan: SweepPlan, checkpoint_dir, data_dir=None, device: str = "cpu", workers: int | None = None,
              threads: int | None = None, on_done=None) -> SweepResult:
    """Run both phases and return every row, the best model per (dataset, regularizer) and the denoisers."""
    started = time.perf_counter()
    auto_workers, auto_threads = default_workers()
    workers = workers or auto_workers
    threads = threads or auto_threads
    checkpoint_dir = str(checkpoint_dir)

    # phase 1: plain autoencoders
    configs = grid_configs(plan.datasets, plan.depths, plan.latents, plan.regularizers,
                           epochs=plan.epochs, seed=plan.seed)
    rows = _run_phase(configs, checkpoint_dir, data_dir, device, min(workers, len(configs)), threads, on_done)
    result = SweepResult(rows=list(rows))
    for row in rows:
        key = (row["dataset"], row["regularizer"])
        if key not in result.best or row["test_loss"] < result.best[key]["test_loss"]:
            result.best[key] = row

    # phase 2: the best plain configuration of each dataset, as a denoiser at each variance
    if plan.denoise and plan.noise_vars:
        denoisers = []
        for dataset in plan.datasets:
            best = min((r for r in rows if r["dataset"] == dataset), key=lambda r: r["test_loss"])
            base = configs[rows.index(best)]
            denoisers += [base.with_(noise_var=float(v)) for v in plan.noise_vars]
        denoise_rows = _run_phase(denoisers, checkpoint_dir, data_dir, device, min(workers, len(denoisers)),
                                  threads, on_done)
        result.rows += denoise_rows
        for row in denoise_rows:
            result.denoising.setdefault(row["dataset"], []).append(row)

    result.seconds = time.perf_counter() - started
    return result


def summary_dict(result: SweepResult) -> dict:
    """Return the lab's summary as plain JSON values."""
    return {
        "best_per_dataset_and_regularizer": [
            {"dataset": d, "regularizer": r, "depth": row["depth"], "latent_dim": row["latent_dim"],
             "test_loss": row["test_loss"], "test_psnr": row["test_psnr"]}
            for (d, r), row in sorted(result.best.items())
        ],
        "denoising": [
            {"dataset": d, "depth": row["depth"], "latent_dim": row["latent_dim"], "regularizer": row["regularizer"],
             "noise_var": row["noise_var"], "noisy_psnr": row["noisy_psnr"], "denoised_psnr": row["test_psnr"],
             "test_loss": row["test_loss"]}
            for d, rows in sorted(result.denoising.items()) for row in rows
        ],
        "psnr_note": "PSNR in dB with data range 1, mean of per-image PSNR over the 10,000 test images",
        "seconds": result.seconds,
    }


def format_markdown(result: SweepResult) -> str:
    """Render the full grid and the summary as Markdown tables."""
    lines = ["| dataset | regularizer | depth | latent | test MSE | test PSNR (dB) |", "| --- | --- | --- | --- | --- | --- |"]
    for (dataset, reg), row in sorted(result.best.items()):
        lines.append(f"| {dataset} | {reg} | {row['depth']} | {row['latent_dim']} | {row['test_loss']:.5f} "
                     f"| {row['test_psnr']:.2f} |")
    if result.denoising:
        lines += ["", "| dataset | denoiser | noise variance | noisy input PSNR (dB) | denoised PSNR (dB) |",
                  "| --- | --- | --- | --- | --- |"]
        for dataset, rows in sorted(result.denoising.items()):
            for row in rows:
                lines.append(f"| {dataset} | depth {row['depth']}, latent {row['latent_dim']}, {row['regularizer']} "
                             f"| {row['noise_var']:g} | {row['noisy_psnr']:.2f} | {row['test_psnr']:.2f} |")
    lines += ["", "| dataset | depth | latent | regularizer | noise variance | train MSE | test MSE | test PSNR (dB) "
                  "| seconds |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result.rows:
        lines.append(f"| {row['dataset']} | {row['depth']} | {row['latent_dim']} | {row['regularizer']} "
                     f"| {row['noise_var']:g} | {row['train_loss']:.5f} | {row['test_loss']:.5f} "
                     f"| {row['test_psnr']:.2f} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(result: SweepResult, out_dir) -> list[Path]:
    """Write grid.csv, grid.json, summary.json and summary.md under out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_csv, grid_json, summary_json = out_dir / "grid.csv", out_dir / "grid.json", out_dir / "summary.json"
    (out_dir / "summary.md").write_text(format_markdown(result))
    with open(grid_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, GRID_COLUMNS)
        writer.writeheader()
        writer.writerows(result.rows)
    grid_json.write_text(json.dumps(result.rows, indent=1) + "\n")
    summary_json.write_text(json.dumps(summary_dict(result), indent=1) + "\n")
    return [grid_csv, grid_json, summary_json, out_dir / "summary.md"]


def format_summary(result: SweepResult) -> str:
    """Render the summary tables as fixed-width text for the terminal."""
    lines = ["Best plain autoencoder per dataset and regularizer (lowest test MSE):",
             f"{'dataset':<14}{'regularizer':<12}{'depth':>6}{'latent':>8}{'test MSE':>12}{'PSNR dB':>9}"]
    for (dataset, reg), row in sorted(result.best.items()):
        lines.append(f"{dataset:<14}{reg:<12}{row['depth']:>6}{row['latent_dim']:>8}"
                     f"{row['test_loss']:>12.5f}{row['test_psnr']:>9.2f}")
    if result.denoising:
        lines += ["", "Denoising (mean per-image PSNR in dB over the test set, data range 1):",
                  f"{'dataset':<14}{'model':<22}{'noise var':>10}{'noisy':>8}{'denoised':>10}"]
        for dataset, rows in sorted(result.denoising.items()):
            for row in rows:
                model = f"d{row['depth']} z{row['latent_dim']} {row['regularizer']}"
                lines.append(f"{dataset:<14}{model:<22}{row['noise_var']:>10g}"
                             f"{row['noisy_psnr']:>8.2f}{row['test_psnr']:>10.2f}")
    lines.append(f"\n{len(result.rows)} configurations in {result.seconds:.0f} s")
    return "\n".join(lines)
