"""Computations behind the dashboard, free of streamlit: denoiser choice, shown images, scores.

Conventions follow ae_core.metrics: noise_var is a variance, PSNR uses data range 1, and a mean
PSNR is the mean of per-image PSNR values.
"""

import atexit
import base64
import logging
import math
import os
import queue
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DATASETS, DEPTHS, LATENT_GRID, NOISE_VARS, ModelConfig, grid_configs
from .metrics import PSNR_CAP_DB, apply_fixed_noise, psnr_per_image
from .train import evaluate

logger = logging.getLogger(__name__)

# Noise variances the dashboard slider offers: 0 to 1 in steps of 0.05.
SLIDER_STEP = 0.05
SLIDER_VARS = tuple(round(i * SLIDER_STEP, 2) for i in range(21))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Choosing the model for a noise variance


def nearest_trained_var(noise_var: float, trained_vars: Iterable[float] = NOISE_VARS) -> float | None:
    """Return the trained variance closest to noise_var (the lower one on a tie), or None for 0."""
    if noise_var <= 0:
        return None
    return min(trained_vars, key=lambda trained: (abs(trained - noise_var), trained))


def denoiser_for(config: ModelConfig, noise_var: float) -> ModelConfig | None:
    """Return the denoiser of config's architecture trained at the variance nearest to noise_var."""
    trained_var = nearest_trained_var(noise_var)
    if trained_var is None:
        return None
    return config.with_(noise_var=float(trained_var))


def describe_denoiser(noise_var: float) -> str:
    """Describe which trained variance serves a slider value, for the page."""
    trained_var = nearest_trained_var(noise_var)
    if trained_var is None:
        return "variance 0: the plain autoencoder reconstructs the clean images"
    if math.isclose(trained_var, noise_var):
        return f"denoiser trained at variance {trained_var:g}"
    return f"denoiser trained at variance {trained_var:g} (the nearest to {noise_var:g})"


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def checkpoint_stamp(path: Path) -> tuple | None:
    """Identify one version of a checkpoint file: (path, mtime_ns, size, inode), or None when absent.

    A retrained checkpoint replaces the file by a rename, which gives it a new inode and mtime.
    Caches keyed by the stamp therefore do not serve the previous model.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (str(path), info.st_mtime_ns, info.st_size, info.st_ino)


@dataclass(frozen=True)
class EntrySummary:
    """Status, metrics and history of one configuration's checkpoint, without its weights."""

    config: ModelConfig
    status: str  # "cached", "missing", "damaged" or "training"
    metrics: dict | None = None
    history: tuple = ()
    created: str = ""
    error: str | None = None
    stamp: tuple | None = None  # checkpoint_stamp of the file these values were read from


# ---------------------------------------------------------------------------------------------
# The grid and the sweep's choice of denoisers


def plain_grid(epochs: int, seed: int) -> list[ModelConfig]:
    """Return the plain-autoencoder grid of the sweep for the given epochs and seed."""
    return grid_configs(DATASETS, DEPTHS, LATENT_GRID, ("lasso", "dropout"), epochs=epochs, seed=seed)


def best_plain(configs_with_loss: Iterable[tuple[ModelConfig, float]], dataset: str) -> ModelConfig | None:
    """Return the plain configuration of a dataset with the lowest test loss, or None when there is none."""
    candidates = [(loss, config.stem, config) for config, loss in configs_with_loss
                  if config.dataset == dataset and not config.is_denoiser and loss is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda item: (item[0], item[1]))[2]


def sweep_denoisers(best: ModelConfig, noise_vars: Iterable[float] = NOISE_VARS) -> list[ModelConfig]:
    """Return the sweep's denoisers of one dataset: its best plain configuration at each variance."""
    return [best.with_(noise_var=float(var)) for var in noise_vars]


def overview_rows(summaries: Iterable[EntrySummary]) -> list[dict]:
    """Return one table row per configuration: architecture, status and test metrics."""
    rows = []
    for entry in summaries:
        config = entry.config
        metrics = entry.metrics or {}
        rows.append({
            "dataset": config.dataset,
            "depth": config.depth,
            "latent_dim": config.latent_dim,
            "regularizer": config.regularizer,
            "noise_var": config.noise_var,
            "status": entry.status,
            "test_loss": metrics.get("test_loss"),
            "test_psnr": metrics.get("test_psnr"),
            "noisy_psnr": metrics.get("noisy_psnr"),
        })
    return rows


def best_rows(rows: Iterable[dict]) -> list[dict]:
    """Return the plain row with the lowest test loss per (dataset, regularizer), in a stable order."""
    best: dict[tuple, dict] = {}
    for row in rows:
        if row["noise_var"] or row["test_loss"] is None:
            continue
        key = (row["dataset"], row["regularizer"])
        if key not in best or row["test_loss"] < best[key]["test_loss"]:
            best[key] = row
    return [best[key] for key in sorted(best)]


# ---------------------------------------------------------------------------------------------
# Shown images


def pick_test_indices(n_test: int, count: int, seed: int) -> np.ndarray:
    """Choose `count` distinct test images; a larger count keeps the images of a smaller one."""
    if not 1 <= count <= n_test:
        raise ValueError(f"count must be from 1 to {n_test}, got {count}")
    return np.random.default_rng(seed).permutation(n_test)[:count]


@dataclass(frozen=True)
class ShownImages:
    """Originals, noisy inputs and reconstructions of the shown test images, with per-image PSNR."""

    indices: np.ndarray  # rows of the test set
    x: np.ndarray  # (n, 784) float32 in [0, 1]
    x_noisy: np.ndarray  # (n, 784); equal to x when noise_var is 0
    x_hat: np.ndarray | None  # (n, 784), None without a model
    noisy_psnr: np.ndarray  # (n,) dB, PSNR_CAP_DB where x_noisy equals x
    psnr: np.ndarray | None  # (n,) dB of x_hat against x


@torch.inference_mode()
def reconstruct_shown(model: torch.nn.Module | None, test_x: torch.Tensor, standard_normal: torch.Tensor,
                      indices: np.ndarray, noise_var: float) -> ShownImages:
    """Add the fixed evaluation noise to the chosen test images and reconstruct them.

    The model must already be in eval mode; it is only called, never changed, so one shared
    model can serve several threads.
    """
    rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    x = test_x[rows]
    x_noisy = apply_fixed_noise(x, standard_normal[rows], noise_var)
    noisy_psnr = psnr_per_image(x, x_noisy).numpy()
    x_hat = psnr = None
    if model is not None:
        x_hat_tensor = model(x_noisy)
        psnr = psnr_per_image(x, x_hat_tensor).numpy()
        x_hat = x_hat_tensor.numpy()
    return ShownImages(np.asarray(indices), x.numpy(), x_noisy.numpy(), x_hat, noisy_psnr, psnr)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one (height, width) uint8 array as an 8-bit grayscale PNG.

    Written directly (signature, IHDR, one IDAT, IEND; filter type 0 on every row): for 28 x 28
    images this is about three times faster than PIL, whose per-call set-up dominates.
    """
    height, width = image.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), image]).tobytes()  # a 0 filter byte per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # bit depth 8, grayscale
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def png_data_urls(images: np.ndarray) -> list[str]:
    """Encode (n, 784) floats in [0, 1] as n grayscale 28 x 28 PNG images in data: URLs.

    A data: URL carries the pixels itself, so equal URLs mean equal images, and the page can
    show it without storing a file.
    """
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return ["data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii") for image in pixels]


def psnr_caption(value: float) -> str:
    """Format one image's PSNR; the capped value means the two images are identical."""
    if value >= PSNR_CAP_DB:
        return "identical"
    return f"{value:.1f} dB"


# ---------------------------------------------------------------------------------------------
# Whole-test-set scores


def score_test_set(model: torch.nn.Module, test_x: torch.Tensor, standard_normal: torch.Tensor,
                    noise_var: float) -> dict:
    """Evaluate a model on the whole test set with the fixed noise of variance noise_var."""
    with torch.inference_mode():
        return evaluate(model, test_x, noise_var, standard_normal if noise_var > 0 else None)


def noisy_input_scores(test_x: torch.Tensor, standard_normal: torch.Tensor, noise_var: float) -> dict:
    """Mean per-image PSNR of the noisy test images against the clean ones; None at variance 0."""
    if noise_var <= 0:
        return {"noisy_psnr": None}
    total = 0.0
    with torch.inference_mode():
        for start in range(0, test_x.shape[0], 1000):
            x = test_x[start:start + 1000]
            x_noisy = apply_fixed_noise(x, standard_normal[start:start + 1000], noise_var)
            total += psnr_per_image(x, x_noisy).sum().item()
    return {"noisy_psnr": total / test_x.shape[0]}


class ScoreCache:
    """Whole-test-set scores keyed by (checkpoint stamp, noise variance), shared by all sessions.

    One evaluation of the 10,000 test images took 0.7-3 s on a shared 2-core CPU (torch 2.14). The page
    therefore computes the scores of the current slider value on the spot and queues the other
    slider values for a single background thread. A key is computed once even when several
    sessions and the background thread ask for it at the same moment: the later callers wait for
    the first one's result. Entries beyond max_entries are evicted oldest first.
    """

    def __init__(self, max_entries: int = 2048):
        self.max_entries = max_entries
        self._results: OrderedDict[Hashable, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Event] = {}  # key -> set when its computation ends
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._outstanding = 0  # tasks queued or running
        self._generation = 0
        self._closed = False
        self._worker: threading.Thread | None = None
        # A torch call still running in a daemon thread at interpreter exit aborts the process.
        atexit.register(self.close)

    def get(self, key: Hashable) -> dict | None:
        with self._lock:
            return self._results.get(key)

    def put(self, key: Hashable, scores: dict) -> None:
        with self._lock:
            self._results[key] = scores
            self._results.move_to_end(key)
            while len(self._results) > self.max_entries:
                self._results.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], dict]) -> dict:
        """Return the stored scores of key, computing and storing them first when absent.

        When another thread is computing key, wait for it; if that computation fails, compute here.
        """
        while True:
            with self._lock:
                scores = self._results.get(key)
                if scores is not None:
                    return scores
                running = self._computing.get(key)
                if running is None:
                    done = self._computing[key] = threading.Event()
                    break
            running.wait()
        try:
            scores = compute()
            self.put(key, scores)
            return scores
        finally:
            with self._lock:
                del self._computing[key]
            done.set()

    def prefetch(self, tasks: list[tuple[Hashable, Callable[[], dict]]]) -> None:
        """Compute the missing tasks in the background, in order; a later call drops the rest of this one."""
        missing = [(key, compute) for key, compute in tasks if self.get(key) is None]
        with self._lock:
            if self._closed:
                return
            self._generation += 1
            for key, compute in missing:
                self._pending.put((self._generation, key, compute))
            self._outstanding += len(missing)
            if self._outstanding and self._worker is None:
                self._worker = threading.Thread(target=self._work, name="score-prefetch", daemon=True)
                self._worker.start()

    def close(self, timeout: float = 30.0) -> None:
        """Drop the queued tasks and wait for the running one, so that no evaluation outlives the process."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def idle(self) -> bool:
        """Tell whether no prefetch task is waiting or running."""
        with self._lock:
            return self._outstanding == 0

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._outstanding == 0:
                    self._worker = None
                    return
            generation, key, compute = self._pending.get()
            try:
                with self._lock:
                    stale = (self._closed or generation != self._generation or key in self._results
                             or key in self._computing)
                if not stale:
                    self.get_or_compute(key, compute)
            except Exception:  # noqa: BLE001 - the page computes a missing entry itself
                logger.exception("prefetching test-set scores for %s failed", key)
            finally:
                with self._lock:
                    self._outstanding -= 1

