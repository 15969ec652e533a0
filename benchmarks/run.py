"""Command line of the benchmark: run every part, print the figures and write results.json."""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from ae_core.config import ModelConfig
from ae_core.data import DataError, load_dataset
from ae_core.store import CheckpointStore

from . import inference, machine, page, report, sweep_time, training
from .flops import GemmTimer

OUT_FILE = Path("benchmarks/out/results.json")

# Targets of the lab, checked at the end of every run.
TARGET_SPEEDUP = 4.0
TARGET_GEMM_FRACTION = 0.60
TARGET_SWEEP_S = 8 * 60
TARGET_RERUN_S = 0.100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure training throughput, the GEMM rate, the sweep's wall time, the dashboard's "
                    "latency and memory, and inference times, then write benchmarks/out/results.json.")
    parser.add_argument("--quick", action="store_true",
                        help="check that the script works: few steps and repeats, sweep epochs on 1,280 images, "
                             "one server start, no memory walk. The figures are not for the record")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads of the training and GEMM parts (default: {torch.get_num_threads()}, "
                             "torch's own choice here)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("AE_DATA_DIR") or "data"),
                        help="folder with the prepared datasets (default: $AE_DATA_DIR or data)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        default=Path(os.environ.get("AE_CHECKPOINT_DIR") or "checkpoints"),
                        help="checkpoints the page and the inference part load (default: $AE_CHECKPOINT_DIR "
                             "or checkpoints)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="output folder of a finished `python -m ae_core sweep` (default: results)")
    parser.add_argument("--skip", action="append", default=[], choices=["training", "sweep", "page", "inference"],
                        help="leave out one part (repeat the option to leave out several)")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help=f"JSON results file (default: {OUT_FILE})")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def check_targets(results: dict) -> dict:
    """Compare the figures with the targets: met, or the shortfall as a ratio of the target."""
    targets = {}
    for row in results.get("training", []):
        name = f"d{row['depth']} z{row['latent_dim']}"
        targets[f"speedup {name}"] = _target(row["speedup"], TARGET_SPEEDUP, higher_is_better=True)
        targets[f"gemm fraction {name}"] = _target(row["fraction_of_gemm"], TARGET_GEMM_FRACTION,
                                                   higher_is_better=True)
    sweep = results.get("sweep")
    if sweep:
        default = next(e for e in sweep["extrapolated"]
                       if (e["workers"], e["threads"]) == tuple(sweep["default_layout"].values()))
        targets["sweep wall time (extrapolated, default layout)"] = _target(default["total_seconds"], TARGET_SWEEP_S,
                                                                            higher_is_better=False)
        actual = sweep["actual"]
        if actual.get("summary_trained") and actual["summary_trained"] == actual.get("summary_models"):
            targets["sweep wall time (actual run, summary.json)"] = _target(actual["summary_seconds"], TARGET_SWEEP_S,
                                                                            higher_is_better=False)
        elif actual.get("checkpoint_span_seconds"):
            targets["sweep wall time (actual run, checkpoint times)"] = _target(
                actual["checkpoint_span_seconds"], TARGET_SWEEP_S, higher_is_better=False)
    page_results = results.get("page")
    if page_results and page_results.get("server_rerun"):
        targets["page rerun median (real server)"] = _target(page_results["server_rerun"]["median_s"],
                                                             TARGET_RERUN_S, higher_is_better=False)
    if page_results and page_results.get("rerun"):
        targets["page rerun median (AppTest)"] = _target(page_results["rerun"]["median_s"], TARGET_RERUN_S,
                                                         higher_is_better=False)
    return targets


def _target(value: float, target: float, higher_is_better: bool) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"value": value, "target": target, "met": met,
            "value_over_target": value / target}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    results = {"environment": machine.describe_machine(), "quick": args.quick, "load": {}, "part_seconds": {}}
    results["environment"]["other_processes_cores_at_start"] = machine.other_processes_cpu()
    report.environment(results["environment"], args.quick)

    try:
        mnist = load_dataset("mnist", args.data_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    gemm_timer = GemmTimer(block_s=0.01 if args.quick else 0.05, repeats=3 if args.quick else 5)
    cores = os.cpu_count() or 1
    monitor = machine.LoadMonitor()
    monitor.start()

    def record_part(part: str, part_started: float) -> None:
        results["part_seconds"][part] = time.perf_counter() - part_started
        results["load"][part] = monitor.mean_between(part_started, time.perf_counter())

    if "training" not in args.skip:
        part_started = time.perf_counter()
        warmup, steps, repeats = (5, 20, 1) if args.quick else (50, 300, 3)
        results["training"] = []
        for depth, latent_dim in training.COMPARED:
            config = ModelConfig.make(depth=depth, latent_dim=latent_dim)
            row = training.compare(config, mnist, args.data_dir, warmup, steps, repeats, gemm_timer, args.threads)
            results["training"].append(row)
            report.training(row)
        record_part("training", part_started)

    if "inference" not in args.skip:
        part_started = time.perf_counter()
        store = CheckpointStore(args.checkpoint_dir)
        results["inference"] = []
        for depth, latent_dim in training.COMPARED:
            config = ModelConfig.make(depth=depth, latent_dim=latent_dim)
            row = inference.measure(config, mnist, store, repeats=1 if args.quick else 5)
            results["inference"].append(row)
            report.inference(row)
        record_part("inference", part_started)

    if "sweep" not in args.skip:
        part_started = time.perf_counter()
        results["sweep"] = sweep_time.measure(args.data_dir, args.results_dir, args.checkpoint_dir, gemm_timer, cores,
                                              args.quick)
        report.sweep(results["sweep"])
        record_part("sweep", part_started)

    if "page" not in args.skip:
        part_started = time.perf_counter()
        results["page"] = page.measure(args.data_dir, args.checkpoint_dir, args.quick)
        report.page(results["page"])
        record_part("page", part_started)

    monitor.stop()
    results["targets"] = check_targets(results)
    results["seconds"] = time.perf_counter() - started
    report.targets(results["targets"])
    report.footer(results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
