"""Configuration of one trained autoencoder, and the grid the lab explores.

A ModelConfig is frozen and hashable: it builds the model, names the checkpoint file, is stored
inside that file, and is the cache key in the dashboard. Every hyperparameter that changes the
trained weights is a field, so two configurations that differ in any of them never share a file.
"""

import math
from dataclasses import asdict, dataclass, fields, replace

# Bumped whenever the model layout or the checkpoint contents change, so that files written by an
# older version are reported as incompatible instead of being loaded into the wrong shapes.
FORMAT_VERSION = 1

DATASETS = ("mnist", "fashion-mnist")
DEPTHS = (3, 5)
LATENT_GRID = (15, 30, 50, 100)
REGULARIZERS = ("lasso", "dropout", "none")
NOISE_VARS = (0.1, 0.25, 0.5, 0.75, 1.0)

IMAGE_SIZE = 28 * 28
MIN_LATENT_DIM = 2
MAX_LATENT_DIM = IMAGE_SIZE

# Defaults of the lab this project grew from: 10 epochs, batch 128, Adam at 0.001, Lasso 1e-5.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 1e-3
DEFAULT_LASSO_LAMBDA = 1e-5
# A common rate for small fully-connected networks: it drops one hidden unit in five.
DEFAULT_DROPOUT_P = 0.2
DEFAULT_SEED = 0


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the value and the valid range."""


def default_strength(regularizer: str) -> float:
    """Return the default strength: Lasso's lambda, Dropout's rate, or 0 for none."""
    if regularizer == "lasso":
        return DEFAULT_LASSO_LAMBDA
    if regularizer == "dropout":
        return DEFAULT_DROPOUT_P
    return 0.0


def _format_number(value: float) -> str:
    """Format a float for a file name: shortest round-trip form, '.' replaced by 'p'."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text.replace(".", "p").replace("-", "m").replace("+", "")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines one trained model's weights."""

    dataset: str = "mnist"
    depth: int = 3  # Linear layers in the encoder; the decoder mirrors it
    latent_dim: int = 100
    regularizer: str = "lasso"  # "lasso", "dropout" or "none"
    strength: float = DEFAULT_LASSO_LAMBDA  # Lasso lambda or Dropout rate p; 0 for "none"
    noise_var: float = 0.0  # variance of the Gaussian training noise; 0 trains a plain autoencoder
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    seed: int = DEFAULT_SEED

    def __post_init__(self):
        validate_config(self)

    @classmethod
    def make(cls, regularizer: str = "lasso", strength: float | None = None, **kwargs) -> "ModelConfig":
        """Build a config, taking the regularizer's default strength when none is given."""
        if strength is None:
            strength = default_strength(regularizer) if regularizer in REGULARIZERS else 0.0
        return cls(regularizer=regularizer, strength=strength, **kwargs)

    @property
    def is_denoiser(self) -> bool:
        return self.noise_var > 0

    @property
    def stem(self) -> str:
        """Readable file-name stem built from every field and the format version."""
        parts = [
            self.dataset,
            f"d{self.depth}",
            f"z{self.latent_dim}",
            f"{self.regularizer}{_format_number(self.strength)}" if self.regularizer != "none" else "none",
            f"var{_format_number(self.noise_var)}",
            f"e{self.epochs}",
            f"b{self.batch_size}",
            f"lr{_format_number(self.lr)}",
            f"s{self.seed}",
            f"v{FORMAT_VERSION}",
        ]
        return "_".join(parts)

    @property
    def label(self) -> str:
        """Short human-readable description for tables and charts."""
        reg = self.regularizer if self.regularizer == "none" else f"{self.regularizer} {self.strength:g}"
        text = f"{self.dataset}, depth {self.depth}, latent {self.latent_dim}, {reg}"
        if self.is_denoiser:
            text += f", noise var {self.noise_var:g}"
        return text

    def cli_options(self) -> str:
        """Return the `python -m ae_core train` options that select this configuration."""
        options = [f"--dataset {self.dataset}", f"--depth {self.depth}", f"--latent-dim {self.latent_dim}",
                   f"--regularizer {self.regularizer}"]
        if self.regularizer != "none":
            options.append(f"--strength {self.strength:g}")
        if self.noise_var:
            options.append(f"--noise-var {self.noise_var:g}")
        defaults = ModelConfig()
        for name in ("epochs", "batch_size", "lr", "seed"):
            if getattr(self, name) != getattr(defaults, name):
                options.append(f"--{name.replace('_', '-')} {getattr(self, name):g}")
        return " ".join(options)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Rebuild a config from to_dict() output; unknown or missing keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        missing = names - set(values)
        if unknown or missing:
            raise ConfigError(f"config keys do not match: unknown {sorted(unknown)}, missing {sorted(missing)}")
        return cls(**values)

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}")


def _check_float(name: str, value, low: float, high: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
        bound = f"{lower} and at most {high:g}" if high is not None else lower
        raise ConfigError(f"{name} must be {bound}, got {value:g}")


def validate_config(config: ModelConfig) -> None:
    """Raise ConfigError naming the first invalid field of the config."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.depth not in DEPTHS:
        raise ConfigError(f"depth must be one of {', '.join(map(str, DEPTHS))}, got {config.depth!r}")
    _check_int("latent_dim", config.latent_dim, MIN_LATENT_DIM, MAX_LATENT_DIM)
    if config.regularizer not in REGULARIZERS:
        raise ConfigError(f"unknown regularizer {config.regularizer!r}; choose one of {', '.join(REGULARIZERS)}")
    if config.regularizer == "lasso":
        _check_float("Lasso lambda", config.strength, 0.0)
    elif config.regularizer == "dropout":
        _check_float("Dropout rate", config.strength, 0.0, 1.0)
        if config.strength >= 1.0:
            raise ConfigError(f"Dropout rate must be below 1, got {config.strength:g}")
    elif config.strength != 0:
        raise ConfigError(f"regularizer 'none' takes no strength, got {config.strength!r}")
    _check_float("noise_var", config.noise_var, 0.0, 1e4)
    _check_int("epochs", config.epochs, 1, 10_000)
    _check_int("batch_size", config.batch_size, 1, 60_000)
    _check_float("lr", config.lr, 0.0, 10.0, low_open=True)
    _check_int("seed", config.seed, 0, 2**63 - 1)


def grid_configs(datasets=DATASETS, depths=DEPTHS, latents=LATENT_GRID, regularizers=("lasso", "dropout"),
                 **common) -> list[ModelConfig]:
    """Return the plain-autoencoder grid: every dataset x depth x latent size x regularizer."""
    return [
        ModelConfig.make(dataset=d, depth=depth, latent_dim=z, regularizer=reg, **common)
        for d in datasets for depth in depths for z in latents for reg in regularizers
    ]
