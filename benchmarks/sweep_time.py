"""Wall time of the whole sweep, extrapolated from one measured epoch of each distinct architecture.

The sweep trains 32 plain models (2 datasets x 2 depths x 4 latent sizes x 2 regularizers) and
10 denoisers (the best plain model of each dataset at 5 noise variances), 10 epochs each. Both
datasets have the same image size, so an architecture costs the same on either, and only MNIST
is measured. Each architecture trains one epoch on the full 60,000 images in a process pool of
the layout under test, so the two single-threaded workers compete for the machine as they do
in the sweep. The extrapolation replays the sweep's task order on those measured times.
"""

import datetime
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ae_core.config import DATASETS, ModelConfig, grid_configs
from ae_core.data import TEST_SIZE, TRAIN_SIZE, load_dataset
from ae_core.store import CheckpointStore
from ae_core.sweep import SweepPlan, default_workers
from ae_core.train import train_model

from .flops import forward_flops, training_flops, training_gemms
from .machine import torch_threads

# Noise variance of the measured denoiser epoch. Drawing the noise costs the same at any variance.
MEASURED_NOISE_VAR = 0.5

_worker_data: dict = {}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _time_one_epoch(config: ModelConfig, data_dir: str, train_images: int, test_images: int) -> dict:
    """Worker body: train one epoch of config and return its times in seconds."""
    started_at = time.time()
    load_s = 0.0
    if config.dataset not in _worker_data:
        loading = time.perf_counter()
        _worker_data[config.dataset] = load_dataset(config.dataset, data_dir)
        load_s = time.perf_counter() - loading
    data = _worker_data[config.dataset]
    if (train_images, test_images) != (TRAIN_SIZE, TEST_SIZE):
        data = data.subset(train_images, test_images)

    result = train_model(config.with_(epochs=1), data)
    epoch_s = result.history[0]["seconds"]
    return {
        "stem": config.stem,
        "pid": os.getpid(),
        "started_at": started_at,
        "load_seconds": load_s,
        "epoch_seconds": epoch_s,  # training steps plus the test-set evaluation
        "setup_seconds": result.metrics["seconds"] - epoch_s,  # model and optimizer construction
    }


def architecture_key(config: ModelConfig) -> tuple:
    """What decides a model's training time: shapes, regularizer, and whether noise is drawn."""
    return (config.depth, config.latent_dim, config.regularizer, config.is_denoiser)


def sweep_configs(plan: SweepPlan, denoiser_bases: dict) -> tuple[list, list]:
    """Return the sweep's two phases in its own task order. denoiser_bases maps dataset -> plain config."""
    phase1 = grid_configs(plan.datasets, plan.depths, plan.latents, plan.regularizers,
                          epochs=plan.epochs, seed=plan.seed)
    phase2 = [denoiser_bases[dataset].with_(noise_var=float(var))
              for dataset in plan.datasets for var in plan.noise_vars]
    return phase1, phase2


def denoiser_bases_from(summary_path: Path, plan: SweepPlan) -> tuple[dict, str]:
    """Return dataset -> the plain config the sweep turned into denoisers, and where that came from.

    The choice depends on trained test losses, so it is read from the sweep's summary.json. Without
    one, the largest depth-3 model (latent 100, Lasso) is assumed for both datasets.
    """
    bases = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        for row in summary.get("denoising", []):
            bases[row["dataset"]] = ModelConfig.make(
                dataset=row["dataset"], depth=row["depth"], latent_dim=row["latent_dim"],
                regularizer=row["regularizer"], epochs=plan.epochs, seed=plan.seed)
    if all(dataset in bases for dataset in plan.datasets):
        return bases, f"read from {summary_path}"
    assumed = {dataset: ModelConfig.make(dataset=dataset, depth=3, latent_dim=100, regularizer="lasso",
                                         epochs=plan.epochs, seed=plan.seed) for dataset in plan.datasets}
    return assumed, "assumed (no summary.json): depth 3, latent 100, lasso"


def measured_architectures(phase1: list, phase2: list) -> list[ModelConfig]:
    """Return one MNIST config of each distinct architecture of the sweep, for a one-epoch run."""
    chosen = {}
    for config in phase1 + phase2:
        key = architecture_key(config)
        if key not in chosen:
            noise_var = MEASURED_NOISE_VAR if config.is_denoiser else 0.0
            chosen[key] = config.with_(dataset=DATASETS[0], noise_var=noise_var, epochs=1)
    return list(chosen.values())


def run_layout(configs: list, data_dir: Path, workers: int, threads: int, train_images: int,
               test_images: int) -> dict:
    """Train one epoch of each config with `workers` processes x `threads` threads, as the sweep would.

    Like the sweep, a single worker trains in this process and several workers form a spawned pool.
    """
    created_at = time.time()
    if workers == 1:
        _worker_data.clear()  # the in-process layout loads its data as the sweep's own process does
        with torch_threads(threads):
            models = [_time_one_epoch(config, str(data_dir), train_images, test_images) for config in configs]
        _worker_data.clear()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(_time_one_epoch, config, str(data_dir), train_images, test_images)
                       for config in configs]
            models = [future.result() for future in futures]
    wall_s = time.time() - created_at

    first_start = {}
    for model in models:
        first_start[model["pid"]] = min(first_start.get(model["pid"], model["started_at"]), model["started_at"])
    return {
        "workers": workers,
        "threads": threads,
        "wall_seconds": wall_s,
        "startup_seconds": max(first_start.values()) - created_at,  # pool start: spawn and imports
        "load_seconds": max(model["load_seconds"] for model in models),
        "models": models,
    }


def simulate_phase(configs: list, seconds_of, workers: int, load_s: float) -> float:
    """Replay a phase on `workers` workers and return its wall time in seconds.

    Each task goes to the worker that is free first, as a process pool hands out tasks in submission
    order. A worker loads a dataset the first time one of its tasks needs it.
    """
    free_at = [0.0] * workers
    loaded = [set() for _ in range(workers)]
    for config in configs:
        worker = min(range(workers), key=free_at.__getitem__)
        if config.dataset not in loaded[worker]:
            loaded[worker].add(config.dataset)
            free_at[worker] += load_s
        free_at[worker] += seconds_of(config)
    return max(free_at)


def extrapolate(layout: dict, architectures: list, phase1: list, phase2: list, epochs: int,
                time_scale: float) -> dict:
    """Extrapolate the sweep's wall time from one measured layout, stretching subset epochs by time_scale."""
    by_key = {}
    for config, model in zip(architectures, layout["models"]):
        by_key[architecture_key(config)] = model

    def seconds_of(config: ModelConfig) -> float:
        model = by_key[architecture_key(config)]
        return epochs * model["epoch_seconds"] * time_scale + model["setup_seconds"]

    # A single worker trains in the sweep's own process: no pool to start, and the datasets it
    # loaded in phase 1 stay loaded for phase 2. Each phase of a pool starts fresh processes.
    in_process = layout["workers"] == 1
    startup_s = 0.0 if in_process else layout["startup_seconds"]
    phase1_s = startup_s + simulate_phase(phase1, seconds_of, layout["workers"], layout["load_seconds"])
    phase2_s = startup_s + simulate_phase(phase2, seconds_of, min(layout["workers"], len(phase2)),
                                          0.0 if in_process else layout["load_seconds"])
    return {"workers": layout["workers"], "threads": layout["threads"], "phase1_seconds": phase1_s,
            "phase2_seconds": phase2_s, "total_seconds": phase1_s + phase2_s,
            "model_seconds": {config.stem: seconds_of(config) for config in phase1 + phase2}}


def flops_lower_bound(phase1: list, phase2: list, gemm_timer, cores: int) -> dict:
    """Bound the sweep's wall time from below: its GEMM FLOPs at the machine's best GEMM rate.

    Each epoch counts 60,000 training images (3x forward) and 10,000 evaluated images (1x forward).
    The rate per architecture is the larger of `cores` times the single-thread GEMM rate and the
    all-core rate at that architecture's batch-128 training shapes. Contention between processes
    only lowers the real rate, so the bound holds.
    """
    total_flops = 0
    total_seconds = 0.0
    rates = {}
    for config in phase1 + phase2:
        key = (config.depth, config.latent_dim)
        if key not in rates:
            gemms = training_gemms(config.depth, config.latent_dim, config.batch_size)
            single = gemm_timer.rate(gemms, threads=1)["gflops"]
            parallel = gemm_timer.rate(gemms, threads=cores)["gflops"]
            rates[key] = max(cores * single, parallel)
        flops = config.epochs * (TRAIN_SIZE * training_flops(config.depth, config.latent_dim)
                                 + TEST_SIZE * forward_flops(config.depth, config.latent_dim))
        total_flops += flops
        total_seconds += flops / (rates[key] * 1e9)
    return {"total_flops": total_flops, "seconds": total_seconds,
            "gflops_by_architecture": {f"d{d} z{z}": rate for (d, z), rate in sorted(rates.items())}}


def actual_sweep(results_dir: Path, checkpoint_dir: Path, configs: list, extrapolated_model_seconds: dict) -> dict:
    """Read what a real `python -m ae_core sweep` left behind: its summary and its checkpoints.

    summary.json contains the wall time of the last sweep, which is only a training time when that
    sweep trained every model (a second sweep loads them all in seconds). Each checkpoint stores
    its training seconds and its creation time, so the span from the first model's start to the
    last model's end gives the training run's wall time even after such a reload.
    """
    actual = {}
    summary_path = results_dir / "summary.json"
    grid_path = results_dir / "grid.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        actual["summary_seconds"] = summary.get("seconds")
        actual["summary_path"] = str(summary_path)
    if grid_path.exists():
        rows = json.loads(grid_path.read_text())
        actual["summary_trained"] = sum(1 for row in rows if row.get("source") == "trained")
        actual["summary_models"] = len(rows)

    store = CheckpointStore(checkpoint_dir)
    starts, ends, ratios = [], [], []
    for config in configs:
        trained = store.load(config)
        if trained is None or not trained.created or not trained.metrics.get("seconds"):
            continue
        seconds = trained.metrics["seconds"]
        end = datetime.datetime.fromisoformat(trained.created).timestamp()
        starts.append(end - seconds)
        ends.append(end)
        ratios.append(seconds / extrapolated_model_seconds[config.stem])
    actual["checkpoints_found"] = len(ends)
    if len(ends) == len(configs):
        actual["checkpoint_span_seconds"] = max(ends) - min(starts)
        actual["checkpoint_span_start"] = datetime.datetime.fromtimestamp(min(starts), datetime.timezone.utc) \
            .isoformat(timespec="seconds")
    if ratios:
        actual["model_seconds_over_extrapolated"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios), "models": len(ratios)}
    return actual


def measure(data_dir: Path, results_dir: Path, checkpoint_dir: Path, gemm_timer, cores: int, quick: bool) -> dict:
    """Measure both worker layouts and extrapolate the sweep. Quick mode trains on small subsets."""
    plan = SweepPlan()
    bases, bases_source = denoiser_bases_from(results_dir / "summary.json", plan)
    phase1, phase2 = sweep_configs(plan, bases)
    architectures = measured_architectures(phase1, phase2)
    train_images, test_images = (1280, 1000) if quick else (TRAIN_SIZE, TEST_SIZE)
    # NOTE: quick mode scales the whole epoch, evaluation included, so its estimate is far too high
    time_scale = TRAIN_SIZE / train_images

    default = default_workers()
    layouts = [default, (1, cores)] if default != (1, cores) else [default, (cores, 1)]
    measured, estimates = [], []
    for workers, threads in layouts:
        layout = run_layout(architectures, data_dir, workers, threads, train_images, test_images)
        measured.append(layout)
        estimates.append(extrapolate(layout, architectures, phase1, phase2, plan.epochs, time_scale))
    fastest = min(estimates, key=lambda estimate: estimate["total_seconds"])

    return {
        "quick": quick,
        "train_images_per_epoch": train_images,
        "models": len(phase1) + len(phase2),
        "epochs": plan.epochs,
        "denoiser_bases": {dataset: config.stem for dataset, config in bases.items()},
        "denoiser_bases_source": bases_source,
        "measured_architectures": [config.stem for config in architectures],
        "default_layout": {"workers": default[0], "threads": default[1]},
        "layouts": measured,
        "extrapolated": estimates,
        "fastest_layout": {"workers": fastest["workers"], "threads": fastest["threads"]},
        "lower_bound": flops_lower_bound(phase1, phase2, gemm_timer, cores),
        "actual": actual_sweep(results_dir, checkpoint_dir, phase1 + phase2, estimates[0]["model_seconds"]),
    }
