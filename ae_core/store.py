"""The checkpoint cache: one entry point that loads a configuration or trains and saves it.

The CLI, the sweep and the dashboard all go through CheckpointStore.get_or_train. A per-file lock
(filelock, an OS-level lock that the OS releases when its process dies, so a lock left by a killed
process never blocks anyone) makes sure two processes never train the same configuration at once:
the second one waits and then loads the first one's result.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import filelock

from .checkpoint import SUFFIX, TEMP_PREFIX, CheckpointError, TrainedModel, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .train import train_model

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def default_checkpoint_dir() -> Path:
    """Return $AE_CHECKPOINT_DIR when set, else checkpoints/ in the current folder."""
    return Path(os.environ.get("AE_CHECKPOINT_DIR") or "checkpoints")


@dataclass
class CacheEntry:
    """What the store knows of one configuration without training it."""

    config: ModelConfig
    status: str  # "cached", "missing" or "damaged"
    metrics: dict | None = None
    history: list | None = None
    error: str | None = None


class CheckpointStore:
    """A folder of checkpoints, one file per configuration, named by ModelConfig.stem."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_checkpoint_dir()

    def path(self, config: ModelConfig) -> Path:
        return self.root / f"{config.stem}{SUFFIX}"

    def lock(self, config: ModelConfig, timeout: float = -1) -> filelock.FileLock:
        """Return the lock of one configuration; timeout -1 waits for as long as it takes.

        Raises OSError naming the folder when the checkpoint folder cannot be created.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(error.errno, f"cannot create checkpoint folder {self.root}: {error.strerror}") from error
        return filelock.FileLock(str(self.root / f"{config.stem}{LOCK_SUFFIX}"), timeout=timeout)

    def load(self, config: ModelConfig) -> TrainedModel | None:
        """Return the cached model, or None when the file is missing or unusable (logged once per call)."""
        trained, damage = self._try_load(config)
        if damage is not None:
            logger.warning("%s", damage)
        return trained

    def _try_load(self, config: ModelConfig) -> tuple[TrainedModel | None, CheckpointError | None]:
        """Return (model, None), (None, the reason the file is unusable) or (None, None) when it is missing."""
        path = self.path(config)
        if not path.exists():
            return None, None
        try:
            return load_checkpoint(path, expected=config), None
        except FileNotFoundError:
            return None, None
        except CheckpointError as error:
            return None, error

    def inspect(self, config: ModelConfig) -> CacheEntry:
        """Report whether a configuration is cached, missing or damaged, with its metrics."""
        path = self.path(config)
        if not path.exists():
            return CacheEntry(config, "missing")
        try:
            trained = load_checkpoint(path, expected=config)
        except FileNotFoundError:
            return CacheEntry(config, "missing")
        except CheckpointError as error:
            return CacheEntry(config, "damaged", error=error.reason)
        return CacheEntry(config, "cached", trained.metrics, trained.history)

    def save(self, trained: TrainedModel) -> Path:
        path = self.path(trained.config)
        save_checkpoint(path, trained)
        logger.info("saved %s", path)
        return path

    def remove_stale_temp_files(self, config: ModelConfig) -> None:
        """Delete temporary files that a killed save of this configuration left behind.

        Call only while holding the configuration's lock, so no live save is writing them.
        """
        for temp in self.root.glob(f"{TEMP_PREFIX}{config.stem}-*{SUFFIX}"):
            temp.unlink(missing_ok=True)
            logger.info("removed stale temporary file %s", temp)

    def get_or_train(self, config: ModelConfig, data_loader, device="cpu", callback=None, should_stop=None,
                     retrain: bool = False) -> tuple[TrainedModel, str]:
        """Return (model, how): how is "loaded", "trained" or "reused" (another process trained it).

        data_loader() is called only when training is needed and returns the DatasetSplits.
        With retrain=True an existing checkpoint is replaced by a fresh training run; it stays in
        place until the new one is completely written. A cancelled or failed run saves nothing.
        """
        damage = None
        if not retrain:
            trained, damage = self._try_load(config)
            if trained is not None:
                return trained, "loaded"
            if damage is not None:
                logger.warning("%s", damage)

        with self.lock(config):
            if not retrain:
                # another process may have finished while this one waited for the lock
                trained, damage_now = self._try_load(config)
                if trained is not None:
                    return trained, "reused"
                # the same damaged file seen again is not logged twice
                if damage_now is not None and (damage is None or str(damage_now) != str(damage)):
                    logger.warning("%s", damage_now)
            self.remove_stale_temp_files(config)

            result = train_model(config, data_loader(), device=device, callback=callback, should_stop=should_stop)
            trained = TrainedModel(config, result.model, result.history, result.metrics)
            self.save(trained)
            return trained, "trained"

    def cached_configs(self) -> list[ModelConfig]:
        """Return the configurations of every readable checkpoint file in the folder."""
        configs = []
        if not self.root.is_dir():
            return configs
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            if path.name.startswith(TEMP_PREFIX):
                continue
            try:
                configs.append(load_checkpoint(path).config)
            except (CheckpointError, OSError) as error:
                logger.warning("skipping %s: %s", path, error)
        return configs
