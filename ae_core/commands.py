"""Bodies of the CLI commands; each returns the process exit code."""

import errno
import json
import logging
import shlex
import sys

import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint
from .config import DATASETS
from .data import DataError, default_data_dir, load_dataset, prepare_dataset
from .metrics import eval_standard_normal
from .store import CheckpointStore
from .sweep import SweepPlan, format_summary, run_sweep, write_results
from .train import TrainingCancelled, evaluate, pick_device

logger = logging.getLogger(__name__)


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class TqdmProgress:
    """A training callback that draws one tqdm bar per run and prints a line per epoch."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, progress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=progress.epochs * progress.steps_per_epoch, desc=self.label, unit="step",
                            leave=False, file=sys.stderr)
        done = (progress.epoch - 1) * progress.steps_per_epoch + progress.step
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(epoch=f"{progress.epoch}/{progress.epochs}", loss=f"{progress.loss:.5f}")
        if progress.kind == "epoch":
            record = progress.history[-1]
            tqdm.write(f"epoch {record['epoch']:>3}/{progress.epochs}  train_loss {record['train_loss']:.5f}  "
                       f"test_loss {record['test_loss']:.5f}  test_psnr {record['test_psnr']:6.2f} dB  "
                       f"{record['seconds']:5.1f} s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_data(args) -> int:
    root = args.data_dir or default_data_dir()
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    for name in names:
        try:
            attempts = prepare_dataset(name, root, allow_download=not args.offline_only)
        except DataError as error:
            return _fail(str(error))
        if len(attempts) == 1:  # the files were already there and valid
            print(f"{name}: ready and verified in {root} (files already present)")
        else:  # the files were fetched: print the problem found and the source that fixed it
            steps = "\n".join(f"  - {line}" for line in attempts)
            print(f"{name}: ready and verified in {root}\n{steps}")
    return 0


def _metrics_line(metrics: dict) -> str:
    line = f"test_loss {metrics['test_loss']:.5f}  test_psnr {metrics['test_psnr']:.2f} dB"
    if metrics.get("noisy_psnr") is not None:
        line += f"  noisy_psnr {metrics['noisy_psnr']:.2f} dB"
    return line + "  (PSNR: mean of per-image PSNR, data range 1)"


def _train_command(args, config, retrain: bool = False) -> str:
    """Return the `python -m ae_core train` command that (re)trains config where this command looks."""
    parts = ["python -m ae_core train"]
    if retrain:
        parts.append("--retrain")
    parts.append(config.cli_options())
    for option, value in (("--data-dir", args.data_dir), ("--checkpoint-dir", args.checkpoint_dir)):
        if value is not None:
            parts.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(parts)


def _save_failure(error: OSError) -> str:
    """Describe a checkpoint folder that cannot be written, with the fix that fits the errno."""
    if error.errno == errno.ENOSPC:
        return f"{error}; free some disk space or choose another --checkpoint-dir"
    return f"{error}; fix the folder's permissions or choose another --checkpoint-dir"


def run_train(args, config) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as error:
        return _fail(str(error), 2)
    store = CheckpointStore(args.checkpoint_dir)
    root = args.data_dir or default_data_dir()
    progress = TqdmProgress(config.stem)
    try:
        trained, how = store.get_or_train(config, lambda: load_dataset(config.dataset, root), device=device,
                                          callback=progress, retrain=args.retrain)
    except DataError as error:
        return _fail(str(error))
    except TrainingCancelled as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(_save_failure(error))
    finally:
        progress.close()
    print(f"{how}: {store.path(config)}")
    print(_metrics_line(trained.metrics))
    return 0


def run_evaluate(args, config) -> int:
    store = CheckpointStore(args.checkpoint_dir)
    path = store.path(config)
    if not path.exists():
        return _fail(f"no checkpoint for {config.label} at {path}; train it with: {_train_command(args, config)}")
    try:
        trained = load_checkpoint(path, expected=config)
    except CheckpointError as error:
        return _fail(f"checkpoint {error.path} is unusable ({error.reason}); retrain it with: "
                     f"{_train_command(args, config, retrain=True)}")
    try:
        data = load_dataset(config.dataset, args.data_dir or default_data_dir())
    except DataError as error:
        return _fail(str(error))
    try:
        device = pick_device(args.device)
    except ValueError as error:
        return _fail(str(error), 2)

    noise_vars = args.eval_noise_vars or (config.noise_var,)
    standard_normal = eval_standard_normal(data.test_x.shape)
    results = []
    for noise_var in noise_vars:
        scores = evaluate(trained.model.to(device), data.test_x, noise_var, standard_normal, device=device)
        results.append({"noise_var": noise_var, **scores})
    if args.json:
        print(json.dumps({"config": config.to_dict(), "results": results}, indent=1))
    else:
        print(f"{config.label} ({path})")
        for row in results:
            print(f"noise_var {row['noise_var']:<6g} " + _metrics_line(row))
    return 0


def run_sweep_command(args) -> int:
    plan = SweepPlan(datasets=args.datasets, depths=args.depths, latents=args.latents,
                     regularizers=args.regularizers, noise_vars=args.noise_vars, epochs=args.epochs,
                     seed=args.seed, denoise=not args.no_denoise)
    store = CheckpointStore(args.checkpoint_dir)
    root = args.data_dir or default_data_dir()
    for name in plan.datasets:
        try:
            load_dataset(name, root)
        except DataError as error:
            return _fail(str(error))

    def on_done(row):
        print(f"{row['source']:>7}  {row['dataset']:<13} d{row['depth']} z{row['latent_dim']:<4} "
              f"{row['regularizer']:<8} var {row['noise_var']:<5g} test_loss {row['test_loss']:.5f}  "
              f"test_psnr {row['test_psnr']:6.2f} dB", flush=True)

    try:
        result = run_sweep(plan, store.root, root, device=args.device, workers=args.workers,
                           threads=args.threads, on_done=on_done)
        paths = write_results(result, args.out)
    except (DataError, OSError) as error:
        return _fail(str(error))
    print()
    print(format_summary(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run(args, config) -> int:
    if args.command == "data":
        return run_data(args)
    if args.command == "train":
        return run_train(args, config)
    if args.command == "evaluate":
        return run_evaluate(args, config)
    return run_sweep_command(args)
