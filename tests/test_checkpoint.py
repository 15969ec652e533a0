"""Checkpoint files and the cache: round trip, damaged files, locking and failed saves."""

import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import torch

from ae_core.checkpoint import CheckpointError, TrainedModel, load_checkpoint, save_checkpoint
from ae_core.config import FORMAT_VERSION, ModelConfig
from ae_core.model import Autoencoder
from ae_core.store import CheckpointStore

CONFIG = ModelConfig.make(latent_dim=15, epochs=2)


def _trained(config: ModelConfig = CONFIG, seed_offset: int = 0) -> TrainedModel:
    model = Autoencoder(config.with_(seed=config.seed + seed_offset)).eval()
    model.config = config
    history = [{"epoch": e, "train_loss": 0.05, "test_loss": 0.04, "test_psnr": 14.0, "seconds": 1.0}
               for e in range(1, config.epochs + 1)]
    metrics = {"train_loss": 0.05, "test_loss": 0.04, "test_psnr": 14.0, "noisy_psnr": None, "seconds": 2.0}
    return TrainedModel(config, model, history, metrics)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(tmp_path):
    trained = _trained()
    path = tmp_path / "model.pt"
    save_checkpoint(path, trained)
    loaded = load_checkpoint(path, expected=CONFIG)
    assert loaded.config == CONFIG
    assert _same_weights(loaded.model, trained.model)
    assert loaded.history == trained.history
    assert loaded.metrics == trained.metrics
    assert not loaded.model.training


def test_file_name_names_whole_config():
    store = CheckpointStore("unused")
    name = store.path(CONFIG).name
    for part in ("mnist", "d3", "z15", "lasso1em05", "var0", "e2", "s0", f"v{FORMAT_VERSION}"):
        assert part in name
    assert store.path(CONFIG.with_(noise_var=0.25)) != store.path(CONFIG)
    assert store.path(CONFIG.with_(seed=1)) != store.path(CONFIG)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_file_detected_and_treated_as_missing(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    store.save(_trained())
    path = store.path(CONFIG)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, expected=CONFIG)
    assert str(path) in str(error.value)
    assert store.load(CONFIG) is None
    assert store.inspect(CONFIG).status == "damaged"


def test_good_checkpoint_beside_damaged_one_still_loads(tmp_path):
    store = CheckpointStore(tmp_path)
    other = CONFIG.with_(latent_dim=30)
    store.save(_trained())
    store.save(_trained(other))
    store.path(CONFIG).write_bytes(b"garbage")
    assert store.load(CONFIG) is None
    assert store.load(other) is not None


def test_file_of_another_configuration_rejected(tmp_path):
    store = CheckpointStore(tmp_path)
    other = CONFIG.with_(latent_dim=30)
    save_checkpoint(store.path(CONFIG), _trained(other))  # renamed file of another model
    with pytest.raises(CheckpointError, match="another configuration"):
        load_checkpoint(store.path(CONFIG), expected=CONFIG)
    assert store.load(CONFIG) is None


def test_weights_of_another_architecture_rejected(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _trained())
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = Autoencoder(CONFIG.with_(depth=5)).state_dict()
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, expected=CONFIG)


def test_other_format_version_rejected(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _trained())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path, expected=CONFIG)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_rejected(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_failed_save_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(_trained())
    before = store.path(CONFIG).read_bytes()

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as error:
        store.save(_trained(seed_offset=1))
    assert str(store.path(CONFIG)) in str(error.value)
    assert store.path(CONFIG).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == [store.path(CONFIG).name]


def test_save_into_unwritable_location_reports_path(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    store = CheckpointStore(blocker / "checkpoints")
    with pytest.raises(OSError) as error:
        store.save(_trained())
    assert "not-a-folder" in str(error.value)


def _train_in_process(root: str, start, results) -> None:
    """Child process: wait for the start signal, then load or train CONFIG on random data."""
    from ae_core.data import DatasetSplits

    generator = torch.Generator().manual_seed(0)
    data = DatasetSplits("mnist", torch.rand(512, 784, generator=generator), torch.zeros(512, dtype=torch.long),
                         torch.rand(128, 784, generator=generator), torch.zeros(128, dtype=torch.long))
    start.wait()
    trained, how = CheckpointStore(root).get_or_train(CONFIG, lambda: data)
    results.put((how, trained.metrics["test_loss"]))


def test_two_processes_train_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    workers = [context.Process(target=_train_in_process, args=(str(tmp_path), start, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(how for how, _ in outcomes) == ["reused", "trained"]
    assert outcomes[0][1] == outcomes[1][1]
    assert load_checkpoint(CheckpointStore(tmp_path).path(CONFIG), expected=CONFIG).config == CONFIG
