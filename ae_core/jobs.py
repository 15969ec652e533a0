"""Background training jobs for the dashboard: one thread per job, shared by every session of a process.

A job trains one or more configurations one after the other through CheckpointStore.get_or_train,
so a finished model is saved exactly as the CLI saves it, and a cancelled or failed run saves
nothing. The manager merges a second request for the configuration of a running job into that
job instead of training it twice.
"""

import atexit
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import DATASETS, NOISE_VARS, ModelConfig
from .data import DatasetSplits
from .explore import best_plain, sweep_denoisers
from .store import CheckpointStore
from .train import Progress, TrainingCancelled

logger = logging.getLogger(__name__)

# Finished jobs kept for the page to show; older ones are forgotten.
MAX_FINISHED_JOBS = 50

DataLoader = Callable[[str], DatasetSplits]


@dataclass(frozen=True)
class JobView:
    """A consistent copy of a job's state, safe to read while the job keeps running."""

    id: int
    title: str
    state: str  # "running", "done", "failed" or "cancelled"
    configs: tuple  # every configuration the job has planned so far
    index: int  # position of the configuration in training, 0-based
    fraction: float  # overall progress from 0 to 1
    detail: str  # one line about the current step
    current: ModelConfig | None
    step_points: tuple  # (epoch as a float, running training loss) of the current configuration
    history: tuple  # finished epochs of the current configuration
    results: tuple  # (config, how) per finished configuration; how as get_or_train returns it
    errors: tuple  # one message per configuration that failed
    started: float
    finished: float | None

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class Job:
    """One background job; the manager and its thread change it only while holding its lock."""

    id: int
    title: str
    key: tuple
    configs: list
    retrain: bool
    state: str = "running"
    index: int = 0
    fraction: float = 0.0
    detail: str = "waiting to start"
    step_points: list = field(default_factory=list)
    history: list = field(default_factory=list)
    results: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def view(self) -> JobView:
        with self.lock:
            current = self.configs[self.index] if self.index < len(self.configs) else None
            return JobView(self.id, self.title, self.state, tuple(self.configs), self.index, self.fraction,
                           self.detail, current, tuple(self.step_points), tuple(dict(r) for r in self.history),
                           tuple(self.results), tuple(self.errors), self.started, self.finished)


class JobManager:
    """Registry of the training jobs of one checkpoint folder: starts, tracks and cancels them."""

    def __init__(self, store: CheckpointStore, device: str = "cpu"):
        self.store = store
        self.device = device
        self._jobs: dict[int, Job] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        # A training step still running in a daemon thread at interpreter exit aborts the process.
        atexit.register(self.shutdown)

    # -- starting ---------------------------------------------------------------------------

    def train(self, config: ModelConfig, data_loader: DataLoader, retrain: bool = False) -> JobView:
        """Train one configuration in the background, or return the running job that already trains it.

        With retrain=False a cached checkpoint is loaded instead of trained again.
        """
        verb = "Retrain" if retrain else "Train"
        return self._start(("one", config), f"{verb} {config.label}", [config], retrain,
                           lambda job: self._run_configs(job, data_loader))

    def train_missing(self, plain_configs: Sequence[ModelConfig], data_loader: DataLoader,
                      noise_vars: Sequence[float] = NOISE_VARS) -> JobView:
        """Train the missing plain configurations, then the sweep's missing denoisers, in one job.

        A dataset's denoisers are its cached plain configuration with the lowest test loss, trained
        at each of noise_vars. They are chosen once the plain phase has finished.
        """
        plain = list(plain_configs)
        key = ("missing", tuple(plain), tuple(noise_vars))
        return self._start(key, "Train all missing grid models", [], False,
                           lambda job: self._run_missing(job, plain, tuple(noise_vars), data_loader))

    def _start(self, key: tuple, title: str, configs: list, retrain: bool, body: Callable[[Job], None]) -> JobView:
        """Return the running job with this key, or register a new one and start its thread."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down; no new training starts")
            for job in self._jobs.values():
                if job.key == key and job.state == "running":
                    logger.info("request for %s joins running job %d", title, job.id)
                    return job.view()
            job = Job(next(self._ids), title, key, configs, retrain)
            self._jobs[job.id] = job
            thread = threading.Thread(target=self._run, args=(job, body), name=f"train-job-{job.id}", daemon=True)
            self._threads[job.id] = thread
            self._forget_old_jobs()
        logger.info("job %d started: %s", job.id, title)
        thread.start()
        return job.view()

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if job.state != "running"]
        for job in sorted(finished, key=lambda j: j.id)[:max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[job.id]
            self._threads.pop(job.id, None)

    # -- queries and control ----------------------------------------------------------------

    def get(self, job_id: int) -> JobView | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job.view() if job is not None else None

    def jobs(self) -> list[JobView]:
        """Return every known job, oldest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.id)
        return [job.view() for job in jobs]

    def running_configs(self) -> set[ModelConfig]:
        """Return the configurations that running jobs have planned and not finished yet."""
        planned = set()
        for view in self.jobs():
            if view.running:
                planned.update(view.configs[view.index:])
        return planned

    def cancel(self, job_id: int) -> bool:
        """Ask a running job to stop before its next training step; return False when it is not running."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.state != "running":
            return False
        job.cancel_event.set()
        logger.info("job %d: cancel requested", job_id)
        return True

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel every running job and wait for the threads; later start requests raise RuntimeError."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            threads = list(self._threads.values())
        for job in jobs:
            job.cancel_event.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, job_id: int, timeout: float | None = None) -> JobView | None:
        """Block until a job's thread ends or timeout seconds pass; return its final view."""
        with self._lock:
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(job_id)

    # -- the job thread ---------------------------------------------------------------------

    def _run(self, job: Job, body: Callable[[Job], None]) -> None:
        """Thread body: run the job and record in it how it ended, including any Exception it raised."""
        try:
            body(job)
        except TrainingCancelled:
            self._finish(job, "cancelled", "cancelled")
            return
        except Exception as error:  # noqa: BLE001 - the page shows it; the thread must not die silently
            logger.exception("job %d failed", job.id)
            with job.lock:
                job.errors.append(f"{type(error).__name__}: {error}")
            self._finish(job, "failed", "failed")
            return
        with job.lock:
            failed = bool(job.errors)
        self._finish(job, "failed" if failed else "done", "finished with errors" if failed else "finished")

    def _finish(self, job: Job, state: str, detail: str) -> None:
        with job.lock:
            job.state = state
            job.detail = detail
            job.finished = time.time()
            if state == "done":
                job.fraction = 1.0
        logger.info("job %d %s after %.1f s", job.id, state, job.finished - job.started)

    def _missing(self, configs: Sequence[ModelConfig]) -> list[ModelConfig]:
        """Return the configurations without a usable checkpoint (missing or damaged)."""
        return [config for config in configs if self.store.inspect(config).status != "cached"]

    def _run_configs(self, job: Job, data_loader: DataLoader, planned_total: int | None = None) -> None:
        """Train job.configs from job.index on; a failed configuration is recorded and skipped.

        Raises TrainingCancelled when the job was cancelled, so the remaining ones are not started.
        """
        while True:
            with job.lock:
                if job.index >= len(job.configs):
                    return
                config = job.configs[job.index]
                total = planned_total or len(job.configs)
                position = job.index
                job.step_points, job.history = [], []
                job.detail = f"model {position + 1} of {total}: {config.label}"
            if job.cancel_event.is_set():
                raise TrainingCancelled(f"job {job.id} was cancelled")

            def report(progress: Progress, position=position, total=total) -> None:
                self._report(job, progress, position, total)

            try:
                _, how = self.store.get_or_train(config, lambda: data_loader(config.dataset), device=self.device,
                                                 callback=report, should_stop=job.cancel_event.is_set,
                                                 retrain=job.retrain)
            except TrainingCancelled:
                raise
            except Exception as error:  # noqa: BLE001 - one broken configuration must not stop the others
                logger.exception("job %d: training %s failed", job.id, config.stem)
                with job.lock:
                    job.errors.append(f"{config.label}: {type(error).__name__}: {error}")
            else:
                with job.lock:
                    job.results.append((config, how))
            with job.lock:
                job.index += 1
                job.fraction = min(1.0, job.index / total)

    def _report(self, job: Job, progress: Progress, position: int, total: int) -> None:
        """Store one training progress report in the job."""
        epoch_position = progress.epoch - 1 + progress.step / progress.steps_per_epoch
        with job.lock:
            job.fraction = min(1.0, (position + progress.fraction) / total)
            job.step_points.append((epoch_position, progress.loss))
            job.history = [dict(record) for record in progress.history]
            job.detail = (f"model {position + 1} of {total}: {job.configs[position].label}; epoch {progress.epoch}"
                          f"/{progress.epochs}, step {progress.step}/{progress.steps_per_epoch}, "
                          f"training loss {progress.loss:.5f}")

    def _run_missing(self, job: Job, plain: list[ModelConfig], noise_vars: tuple, data_loader: DataLoader) -> None:
        """Thread body of train_missing: the missing plain models, then the sweep's missing denoisers."""
        # phase 1 counts one denoiser per dataset and variance until it is known which are cached
        datasets = [d for d in DATASETS if any(c.dataset == d for c in plain)]
        plain_missing = self._missing(plain)
        with job.lock:
            job.configs.extend(plain_missing)
        self._run_configs(job, data_loader, planned_total=len(plain_missing) + len(datasets) * len(noise_vars))

        # phase 2: the sweep's denoisers, chosen from the cached plain models
        losses = []
        for config in plain:
            entry = self.store.inspect(config)
            if entry.status == "cached":
                losses.append((config, entry.metrics.get("test_loss")))
        denoisers = []
        for dataset in datasets:
            best = best_plain(losses, dataset)
            if best is None:
                with job.lock:
                    job.errors.append(f"{dataset}: no plain model is cached, so no denoiser could be chosen")
                continue
            denoisers += sweep_denoisers(best, noise_vars)
        missing = self._missing(denoisers)
        with job.lock:
            job.configs.extend(missing)
        self._run_configs(job, data_loader)
