"""Checkpoint files: one per trained configuration, written atomically, read defensively.

A checkpoint is a torch.save'd dict of plain values: format_version (int), config (dict),
state_dict (name -> tensor), history (list of dicts), metrics (dict) and created (ISO time).
It is read with weights_only=True and map_location="cpu", so a file that tries to run code on
load is rejected instead of executed.
"""

import datetime
import logging
import math
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import FORMAT_VERSION, ConfigError, ModelConfig
from .model import Autoencoder

logger = logging.getLogger(__name__)

SUFFIX = ".pt"
TEMP_PREFIX = ".tmp-"
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, corrupted, unsafe or of another model."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path} is unusable ({reason}); "
                         "it is treated as missing and will be retrained")


@dataclass
class TrainedModel:
    """A finished model loaded from or saved to a checkpoint. The model is on the CPU, in eval mode."""

    config: ModelConfig
    model: Autoencoder
    history: list
    metrics: dict
    created: str = ""


def save_checkpoint(path: Path, trained: TrainedModel) -> None:
    """Write the checkpoint atomically: a temporary file in the same folder, fsync, then rename.

    On any failure the temporary file is removed and OSError is raised with the path; a previous
    file under `path` is left as it was.
    """
    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": trained.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()},
        "history": [dict(record) for record in trained.history],
        "metrics": dict(trained.metrics),
        "created": trained.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.stem}-", suffix=SUFFIX, dir=path.parent)
    except OSError as error:
        raise OSError(error.errno, f"cannot write checkpoint {path}: {error.strerror}") from error

    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"cannot write checkpoint {path}: {error.strerror}") from error
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_number_dict(values, what: str, path: Path) -> dict:
    if not isinstance(values, dict):
        raise CheckpointError(path, f"{what} is not a dict")
    for key, value in values.items():
        if value is not None and not isinstance(value, (int, float, str)):
            raise CheckpointError(path, f"{what}[{key!r}] has type {type(value).__name__}")
        if isinstance(value, float) and math.isnan(value):
            raise CheckpointError(path, f"{what}[{key!r}] is NaN")
    return values


def _read_payload(path: Path):
    """Unpickle a checkpoint with weights_only=True; raise CheckpointError with a plain reason."""
    # torch.save writes a zip archive. Checking for one first gives empty, truncated and foreign
    # files a clear reason, and keeps torch's unpickler (and its warnings) away from them.
    try:
        size = path.stat().st_size
        is_zip = zipfile.is_zipfile(path)
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from error
    if size == 0:
        raise CheckpointError(path, "cannot be read: the file is empty")
    if not is_zip:
        if magic == ZIP_MAGIC:
            raise CheckpointError(path, f"cannot be read: the file is truncated or corrupted ({size} bytes)")
        raise CheckpointError(path, "cannot be read: not a PyTorch checkpoint file")

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise CheckpointError(path, "cannot be read: it contains Python objects that could run code when "
                                        "loaded, so it was not loaded") from error
        raise CheckpointError(path, f"cannot be read: the file is corrupted ({_first_sentence(error)})") from error
    except Exception as error:  # torch raises many types for damaged archives
        raise CheckpointError(path, f"cannot be read: the file is corrupted ({_first_sentence(error)})") from error


def _first_sentence(error: Exception) -> str:
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0].split('. ')[0][:160]}"


def _describe_mismatch(expected: dict, stored: dict) -> str:
    """Return which stored tensors are missing, unexpected or of another shape, or "" when all fit."""
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    reshaped = [name for name in expected
                if name in stored and tuple(stored[name].shape) != tuple(expected[name].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        parts.append(f"{len(reshaped)} tensors of another shape (first {name}: stored "
                     f"{list(stored[name].shape)}, expected {list(expected[name].shape)})")
    return ", ".join(parts)


def load_checkpoint(path: Path, expected: ModelConfig | None = None) -> TrainedModel:
    """Read and check one checkpoint; raise CheckpointError for anything unusable.

    With `expected`, the stored config must equal it, so a renamed file of another
    configuration is rejected.
    """
    path = Path(path)
    payload = _read_payload(path)

    if not isinstance(payload, dict):
        raise CheckpointError(path, "not a checkpoint dict")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(path, f"format version {version!r}, this program reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(payload.get("config") or {})
    except (ConfigError, TypeError) as error:
        raise CheckpointError(path, f"invalid config: {error}") from error
    if expected is not None and config != expected:
        raise CheckpointError(path, f"stores another configuration: {config.stem}")

    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(path, "state_dict is missing or not a dict of tensors")
    model = Autoencoder(config)
    mismatch = _describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(path, f"weights do not fit the architecture of {config.label}: {mismatch}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(path, f"weights do not fit the architecture: {first_line[:200]}") from error
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckpointError(path, "weights contain NaN or infinity")
    model.eval()

    history = payload.get("history")
    if not isinstance(history, list) or not history:
        raise CheckpointError(path, "history is missing or empty")
    history = [_check_number_dict(record, "history record", path) for record in history]
    if len(history) != config.epochs:
        raise CheckpointError(path, f"history has {len(history)} epochs, the config asks for {config.epochs}")
    metrics = _check_number_dict(payload.get("metrics"), "metrics", path)
    return TrainedModel(config, model, history, metrics, str(payload.get("created", "")))
