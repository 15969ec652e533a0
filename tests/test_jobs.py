"""Background training jobs on tiny configurations and small slices of the real data."""

import threading
import time

import pytest

from ae_core.config import ModelConfig
from ae_core.data import load_dataset
from ae_core.jobs import JobManager
from ae_core.store import CheckpointStore
from helpers import one_torch_thread

TINY = ModelConfig.make(regularizer="lasso", dataset="mnist", depth=3, latent_dim=15, epochs=1)
WAIT_S = 120


@pytest.fixture(scope="module")
def small_mnist(data_dir):
    """The first 2,000 training and 500 test images of MNIST: a job trains on them in about a second."""
    return load_dataset("mnist", data_dir).subset(2_000, 500)


@pytest.fixture(autouse=True)
def single_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def manager(tmp_path):
    jobs = JobManager(CheckpointStore(tmp_path / "checkpoints"))
    yield jobs
    jobs.shutdown()


def wait_until(condition, limit_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_same_config_twice_joins_one_job(manager, small_mnist):
    release = threading.Event()

    def held_loader(name):
        release.wait(WAIT_S)  # keeps the first job running while the second request arrives
        return small_mnist

    first = manager.train(TINY, held_loader)
    second = manager.train(TINY, held_loader, retrain=True)
    running = manager.running_configs()
    release.set()
    final = manager.wait(first.id, WAIT_S)

    assert second.id == first.id
    assert len(manager.jobs()) == 1
    assert running == {TINY}
    assert final.state == "done"
    assert final.results == ((TINY, "trained"),)


def test_other_config_gets_its_own_job(manager, small_mnist):
    first = manager.train(TINY, lambda name: small_mnist)
    second = manager.train(TINY.with_(latent_dim=30), lambda name: small_mnist)
    manager.wait(first.id, WAIT_S)
    manager.wait(second.id, WAIT_S)

    assert second.id != first.id
    assert manager.get(first.id).state == "done"
    assert manager.get(second.id).state == "done"


def test_cancel_stops_and_saves_nothing(manager, small_mnist):
    store = manager.store
    job = manager.train(TINY.with_(epochs=50), lambda name: small_mnist)
    reported = wait_until(lambda: manager.get(job.id).step_points)
    cancelled = manager.cancel(job.id)
    final = manager.wait(job.id, WAIT_S)

    assert reported, "the job reported no training step"
    assert cancelled
    assert final.state == "cancelled"
    assert final.fraction < 1.0
    assert not store.path(TINY.with_(epochs=50)).exists()
    assert list(store.root.glob(".tmp-*")) == []
    assert manager.cancel(job.id) is False, "a finished job cannot be cancelled again"


def test_finished_job_model_loads(manager, small_mnist):
    job = manager.train(TINY, lambda name: small_mnist)
    final = manager.wait(job.id, WAIT_S)
    trained = manager.store.load(TINY)

    assert final.state == "done"
    assert final.fraction == 1.0
    assert len(final.history) == 1
    assert trained is not None
    assert trained.config == TINY
    assert len(trained.history) == 1


def test_retrain_replaces_checkpoint(manager, small_mnist):
    path = manager.store.path(TINY)
    manager.wait(manager.train(TINY, lambda name: small_mnist).id, WAIT_S)
    before = path.stat().st_ino, path.stat().st_mtime_ns
    loaded = manager.wait(manager.train(TINY, lambda name: small_mnist).id, WAIT_S)
    retrained = manager.wait(manager.train(TINY, lambda name: small_mnist, retrain=True).id, WAIT_S)

    assert loaded.results == ((TINY, "loaded"),)
    assert retrained.results == ((TINY, "trained"),)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) != before


def test_error_is_kept_in_job(manager):
    def broken_loader(name):
        raise OSError("disk unplugged")

    final = manager.wait(manager.train(TINY, broken_loader).id, WAIT_S)

    assert final.state == "failed"
    assert len(final.errors) == 1
    assert "disk unplugged" in final.errors[0]
    assert not manager.store.path(TINY).exists()


def test_train_missing_adds_best_denoisers(manager, small_mnist):
    plain = [TINY, TINY.with_(regularizer="dropout", strength=0.2)]
    store = manager.store
    manager.wait(manager.train(plain[0], lambda name: small_mnist).id, WAIT_S)

    final = manager.wait(manager.train_missing(plain, lambda name: small_mnist, noise_vars=(0.25,)).id, WAIT_S)
    losses = {config: store.inspect(config).metrics["test_loss"] for config in plain}
    best = min(plain, key=losses.get)

    assert final.state == "done", final.errors
    assert [config for config, _ in final.results] == [plain[1], best.with_(noise_var=0.25)]
    assert all(how == "trained" for _, how in final.results)
    assert store.inspect(best.with_(noise_var=0.25)).status == "cached"


def test_shutdown_rejects_new_jobs(tmp_path, small_mnist):
    jobs = JobManager(CheckpointStore(tmp_path / "checkpoints"))
    running = jobs.train(TINY.with_(epochs=50), lambda name: small_mnist)
    jobs.shutdown(timeout=WAIT_S)

    assert jobs.get(running.id).state == "cancelled"
    with pytest.raises(RuntimeError, match="shut down"):
        jobs.train(TINY, lambda name: small_mnist)
