"""Failure cases of the engine and the CLI: damaged checkpoints, killed and failed saves, concurrent
trainings, broken data folders and invalid options.

Engine cases train a latent-15 model for one epoch on a few hundred random images. CLI cases that
must train use the real MNIST files for one epoch, which took 20 to 35 s per run on two busy cores.
Measured figures (lock recovery time, CLI run times) go to tests/artifacts/reliability.json.
"""

import argparse
import contextlib
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ae_core import cli
from ae_core.checkpoint import TEMP_PREFIX, TrainedModel, load_checkpoint
from ae_core.config import FORMAT_VERSION, ModelConfig
from ae_core.data import IDX_FILES, DatasetSplits, raw_dir
from ae_core.model import Autoencoder
from ae_core.store import CheckpointStore

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"

# Engine cases: 256 random training images in batches of 16, so an epoch has 16 steps and the
# trainer's progress callback (every 10 steps) fires in the middle of it.
TINY = ModelConfig.make(latent_dim=15, epochs=1, batch_size=16)

# CLI cases: options that select one small configuration trained on the real MNIST files.
CLI_CONFIG = ModelConfig.make(latent_dim=15, epochs=1, batch_size=2000)
CLI_MODEL_OPTIONS = ["--latent-dim", "15", "--epochs", "1", "--batch-size", "2000", "--threads", "1"]

# Upper bound for one CLI run that trains, on a busy two-core machine.
CLI_TIMEOUT_S = 240
# How long a child process may take to reach the point where the test kills it.
KILL_POINT_TIMEOUT_S = 60
# A lock whose holder was killed must be free again within this many seconds.
LOCK_RECOVERY_LIMIT_S = 2.0

FIGURES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Train with one thread: on a busy two-core machine a tiny run took 0.3 s with one, 1.6 to 8 s with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _write_figures():
    """Write the figures measured by this module to tests/artifacts/reliability.json at its end."""
    yield
    if FIGURES:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "reliability.json").write_text(json.dumps(FIGURES, indent=1, sort_keys=True) + "\n")


def _random_data(n_train: int = 256, n_test: int = 64) -> DatasetSplits:
    generator = torch.Generator().manual_seed(0)
    return DatasetSplits("mnist", torch.rand(n_train, 784, generator=generator),
                         torch.zeros(n_train, dtype=torch.long), torch.rand(n_test, 784, generator=generator),
                         torch.zeros(n_test, dtype=torch.long))


def _untrained(config: ModelConfig) -> TrainedModel:
    """Return a model with a plausible history, for cases where training itself does not matter."""
    history = [{"epoch": e, "train_loss": 0.05, "test_loss": 0.04, "test_psnr": 14.0, "seconds": 1.0}
               for e in range(1, config.epochs + 1)]
    metrics = {"train_loss": 0.05, "test_loss": 0.04, "test_psnr": 14.0, "noisy_psnr": None, "seconds": 1.0}
    return TrainedModel(config, Autoencoder(config).eval(), history, metrics)


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{TEMP_PREFIX}*"))


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory) -> dict:
    """Metrics of TINY trained alone on _random_data(), the result every recovered run must match."""
    store = CheckpointStore(tmp_path_factory.mktemp("reference"))
    trained, obtained = store.get_or_train(TINY, _random_data)
    assert obtained == "trained"
    return trained.metrics


# ---------------------------------------------------------------------------------------------
# Running the CLI


def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}


def _run_cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_core", *args], cwd=cwd, env=_cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def _start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ae_core", *args], cwd=cwd, env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _error_lines(stderr: str) -> list[str]:
    """Return stderr without tqdm's progress redraws, which are separated by carriage returns."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "step/s" not in line
            and "?step" not in line]


@contextlib.contextmanager
def _in_process_cli():
    """Restore the logging setup that cli.main changes: the ae_core level and the root handlers."""
    core_logger = logging.getLogger("ae_core")
    level = core_logger.level
    root_handlers = list(logging.getLogger().handlers)
    try:
        yield
    finally:
        core_logger.setLevel(level)
        logging.getLogger().handlers[:] = root_handlers


def _main_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Return (exit code, stdout, stderr) of cli.main(argv) run in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with _in_process_cli(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, stdout.getvalue(), stderr.getvalue()


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints through the CLI


def _write_damaged(path: Path, damage: str) -> None:
    """Replace a valid checkpoint at path with a damaged one of the given kind."""
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "architecture":
        payload = torch.load(path, weights_only=True)
        payload["state_dict"] = Autoencoder(CLI_CONFIG.with_(depth=5)).state_dict()
        torch.save(payload, path)
    elif damage == "version":
        payload = torch.load(path, weights_only=True)
        payload["format_version"] = FORMAT_VERSION + 1
        torch.save(payload, path)
    elif damage == "runs-code":
        marker = path.with_name("code-ran")
        torch.save({"format_version": FORMAT_VERSION, "config": _RunsCode(marker)}, path)
    else:
        raise ValueError(damage)


class _RunsCode:
    """A pickled object that creates a marker file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# The plain reason each kind of damage must be reported with.
DAMAGE_REASONS = {
    "truncated": "truncated",
    "random": "not a PyTorch checkpoint",
    "empty": "empty",
    "architecture": "do not fit the architecture",
    "version": f"format version {FORMAT_VERSION + 1}",
    "runs-code": "could run code",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE_REASONS))
def test_evaluate_damaged_checkpoint_one_message(tmp_path, damage):
    folder = tmp_path / "ckpt"
    store = CheckpointStore(folder)
    good = CLI_CONFIG.with_(latent_dim=30)
    store.save(_untrained(CLI_CONFIG))
    store.save(_untrained(good))
    path = store.path(CLI_CONFIG)
    _write_damaged(path, damage)

    options = [*CLI_MODEL_OPTIONS, "--checkpoint-dir", str(folder), "--data-dir", str(tmp_path / "no-data")]
    code, stdout, stderr = _main_in_process(["evaluate", *options])

    assert code == 1
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(path) in lines[0]
    assert DAMAGE_REASONS[damage] in lines[0]
    assert "will be retrained" not in lines[0]
    assert f"python -m ae_core train --retrain {CLI_CONFIG.cli_options()}" in lines[0]
    assert f"--checkpoint-dir {folder}" in lines[0]
    assert not (folder / "code-ran").exists()
    assert store.load(good) is not None


def test_evaluate_unsafe_pickle_in_real_process(tmp_path):
    folder = tmp_path / "ckpt"
    store = CheckpointStore(folder)
    store.save(_untrained(CLI_CONFIG))
    _write_damaged(store.path(CLI_CONFIG), "runs-code")

    result = _run_cli(["evaluate", *CLI_MODEL_OPTIONS, "--checkpoint-dir", str(folder)], tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(store.path(CLI_CONFIG)) in lines[0]
    assert "could run code" in lines[0]
    assert not (folder / "code-ran").exists()


def test_store_logs_damaged_file_once(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save(_untrained(TINY))
    _write_damaged(store.path(TINY), "random")

    with caplog.at_level(logging.WARNING, logger="ae_core"):
        _, obtained = store.get_or_train(TINY, _random_data)

    assert obtained == "trained"
    reports = [record for record in caplog.records if "is unusable" in record.getMessage()]
    assert len(reports) == 1
    assert str(store.path(TINY)) in reports[0].getMessage()
    assert store.load(TINY) is not None


# ---------------------------------------------------------------------------------------------
# A training process killed with SIGKILL


def _train_until_killed(root: str, kill_point: str, marker: str, retrain: bool) -> None:
    """Child process: train TINY and stop at kill_point, announced by creating marker, until killed."""
    import ae_core.checkpoint as checkpoint_module

    # one thread, so no thread pool inherited through fork is used in the child
    torch.set_num_threads(1)

    def wait_for_kill() -> None:
        Path(marker).touch()
        time.sleep(KILL_POINT_TIMEOUT_S * 2)

    callback = None
    if kill_point == "epoch":
        def callback(progress) -> None:
            if progress.kind == "step":
                wait_for_kill()
    elif kill_point == "write":
        real_save = torch.save

        def half_write(payload, handle, *args, **kwargs) -> None:
            buffer = io.BytesIO()
            real_save(payload, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            wait_for_kill()

        checkpoint_module.torch.save = half_write
    elif kill_point == "rename":
        def slow_replace(source, target) -> None:
            wait_for_kill()

        checkpoint_module.os.replace = slow_replace
    CheckpointStore(root).get_or_train(TINY, _random_data, callback=callback, retrain=retrain)


def _kill_at(root: Path, kill_point: str, retrain: bool = False) -> None:
    """Start a training child, SIGKILL it once it reaches kill_point, and wait for it to end."""
    marker = root.parent / f"{root.name}-at-{kill_point}"
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(str(root), kill_point, str(marker), retrain))
    child.start()
    try:
        deadline = time.monotonic() + KILL_POINT_TIMEOUT_S
        while not marker.exists() and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the child never reached the {kill_point} point (exit code {child.exitcode})"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


def _seconds_to_acquire(store: CheckpointStore, config: ModelConfig) -> float:
    lock = store.lock(config, timeout=LOCK_RECOVERY_LIMIT_S * 5)
    started = time.monotonic()
    lock.acquire()
    elapsed = time.monotonic() - started
    lock.release()
    return elapsed


@pytest.mark.parametrize("kill_point", ["epoch", "write"])
def test_killed_training_leaves_nothing_and_retrains(tmp_path, kill_point, reference_metrics):
    root = tmp_path / "ckpt"
    store = CheckpointStore(root)
    _kill_at(root, kill_point)

    assert not store.path(TINY).exists()
    if kill_point == "write":
        assert len(_temp_files(root)) == 1  # the half-written file the killed save left behind

    lock_seconds = _seconds_to_acquire(store, TINY)
    FIGURES[f"lock_recovery_after_kill_in_{kill_point}_s"] = round(lock_seconds, 4)
    assert lock_seconds < LOCK_RECOVERY_LIMIT_S

    trained, obtained = store.get_or_train(TINY, _random_data)
    assert obtained == "trained"
    assert trained.metrics["test_loss"] == reference_metrics["test_loss"]
    assert _temp_files(root) == []
    assert load_checkpoint(store.path(TINY), expected=TINY).metrics["test_loss"] == reference_metrics["test_loss"]


def test_kill_before_rename_keeps_previous_checkpoint(tmp_path, reference_metrics):
    root = tmp_path / "ckpt"
    store = CheckpointStore(root)
    store.save(_untrained(TINY))
    previous = store.path(TINY).read_bytes()
    _kill_at(root, "rename", retrain=True)

    assert store.path(TINY).read_bytes() == previous
    assert len(_temp_files(root)) == 1  # the complete but never renamed file

    lock_seconds = _seconds_to_acquire(store, TINY)
    FIGURES["lock_recovery_after_kill_in_rename_s"] = round(lock_seconds, 4)
    assert lock_seconds < LOCK_RECOVERY_LIMIT_S

    trained, obtained = store.get_or_train(TINY, _random_data, retrain=True)
    assert obtained == "trained"
    assert trained.metrics["test_loss"] == reference_metrics["test_loss"]
    assert _temp_files(root) == []


# ---------------------------------------------------------------------------------------------
# Saves that fail


def _fail_with(errno_value: int):
    def fail(*args, **kwargs):
        raise OSError(errno_value, os.strerror(errno_value))
    return fail


@pytest.mark.parametrize("step, errno_value", [("fsync", 28), ("replace", 30)], ids=["fsync-ENOSPC", "replace-EROFS"])
def test_failed_save_step_keeps_previous_file(tmp_path, monkeypatch, step, errno_value):
    store = CheckpointStore(tmp_path)
    store.save(_untrained(TINY))
    previous = store.path(TINY).read_bytes()

    monkeypatch.setattr(os, step, _fail_with(errno_value))
    with pytest.raises(OSError) as error:
        store.save(_untrained(TINY))
    monkeypatch.undo()

    assert error.value.errno == errno_value
    assert str(store.path(TINY)) in str(error.value)
    assert store.path(TINY).read_bytes() == previous
    assert _temp_files(tmp_path) == []


def test_get_or_train_save_failure_releases_lock(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(_untrained(TINY))
    previous = store.path(TINY).read_bytes()

    monkeypatch.setattr(os, "fsync", _fail_with(28))
    with pytest.raises(OSError) as error:
        store.get_or_train(TINY, _random_data, retrain=True)
    monkeypatch.undo()

    assert str(store.path(TINY)) in str(error.value)
    assert "No space left" in str(error.value)
    assert store.path(TINY).read_bytes() == previous
    assert _temp_files(tmp_path) == []
    assert _seconds_to_acquire(store, TINY) < LOCK_RECOVERY_LIMIT_S


def test_train_into_unusable_folder_one_line(tmp_path, data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where the checkpoint folder's parent should be")
    folder = blocker / "ckpt"

    code, stdout, stderr = _main_in_process(["train", *CLI_MODEL_OPTIONS, "--data-dir", str(data_dir),
                                             "--checkpoint-dir", str(folder)])

    assert code == 1
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(folder) in lines[0]
    assert "cannot create checkpoint folder" in lines[0]
    assert "disk space" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ---------------------------------------------------------------------------------------------
# Two CLI trainings of one configuration started together


def test_two_cli_trainings_train_once(tmp_path, data_dir):
    """Two `train` runs of one configuration started together, over a truncated checkpoint.

    One run trains and replaces the damaged file, the other waits for the lock and loads the
    result. Each run reports the damaged file at most once. One CLI training on the real data
    takes 20 s or more, so this test covers both the concurrent and the damaged-file case.
    """
    folder = tmp_path / "ckpt"
    store = CheckpointStore(folder)
    store.save(_untrained(CLI_CONFIG))
    path = store.path(CLI_CONFIG)
    _write_damaged(path, "truncated")
    options = ["train", *CLI_MODEL_OPTIONS, "--data-dir", str(data_dir), "--checkpoint-dir", str(folder)]

    started = time.monotonic()
    processes = [_start_cli(options, tmp_path) for _ in range(2)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=CLI_TIMEOUT_S))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    FIGURES["cli_two_concurrent_trainings_s"] = round(time.monotonic() - started, 1)

    assert [process.returncode for process in processes] == [0, 0], [stderr for _, stderr in outputs]
    for stdout, stderr in outputs:
        assert "Traceback" not in stderr
        assert stdout.splitlines()[0].endswith(str(path))
    runs_by_outcome = {stdout.split(":")[0]: (stdout, stderr) for stdout, stderr in outputs}
    assert sorted(runs_by_outcome) in (["reused", "trained"], ["loaded", "trained"])
    metric_lines = [stdout.splitlines()[1] for stdout, _ in outputs]
    assert metric_lines[0] == metric_lines[1]

    trainer_stderr = runs_by_outcome["trained"][1]
    trainer_reports = [line for line in _error_lines(trainer_stderr) if "is unusable" in line]
    assert len(trainer_reports) == 1, trainer_stderr
    assert str(path) in trainer_reports[0]
    assert "truncated" in trainer_reports[0]
    waiter_stderr = runs_by_outcome["reused" if "reused" in runs_by_outcome else "loaded"][1]
    assert len([line for line in _error_lines(waiter_stderr) if "is unusable" in line]) <= 1

    assert load_checkpoint(path, expected=CLI_CONFIG).metrics["test_loss"] > 0
    assert [p.name for p in folder.glob("*.pt")] == [path.name]
    assert _temp_files(folder) == []


# ---------------------------------------------------------------------------------------------
# Broken data folders through the CLI


def _broken_data_copy(source: Path, target: Path, damage: str) -> Path:
    """Build a data folder linking to source's MNIST files, with t10k-labels damaged; return that file."""
    source_raw, target_raw = raw_dir("mnist", source), raw_dir("mnist", target)
    target_raw.mkdir(parents=True)
    for filename in IDX_FILES:
        (target_raw / filename).symlink_to(source_raw / filename)
    damaged = target_raw / "t10k-labels-idx1-ubyte"
    data = (source_raw / damaged.name).read_bytes()
    damaged.unlink()
    if damage == "truncated":
        damaged.write_bytes(data[: len(data) // 2])
    elif damage == "altered":
        damaged.write_bytes(data[:-1] + bytes([(data[-1] + 1) % 10]))
    elif damage != "missing":
        raise ValueError(damage)
    return damaged


@pytest.mark.parametrize("damage, reason", [("truncated", "is truncated"), ("altered", "is altered"),
                                            ("missing", "is missing")])
def test_train_on_broken_data_trains_nothing(tmp_path, data_dir, damage, reason):
    broken = tmp_path / "data"
    damaged = _broken_data_copy(data_dir, broken, damage)
    folder = tmp_path / "ckpt"

    code, stdout, stderr = _main_in_process(["train", *CLI_MODEL_OPTIONS, "--data-dir", str(broken),
                                             "--checkpoint-dir", str(folder)])

    assert code == 1
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"{damaged.name} {reason}" in lines[0]
    assert f"python -m ae_core data --dataset mnist --data-dir {broken}" in lines[0]
    assert list(folder.glob("*.pt")) == []


def test_train_on_truncated_data_in_real_process(tmp_path, data_dir):
    broken = tmp_path / "data"
    damaged = _broken_data_copy(data_dir, broken, "truncated")
    folder = tmp_path / "ckpt"

    result = _run_cli(["train", *CLI_MODEL_OPTIONS, "--data-dir", str(broken), "--checkpoint-dir", str(folder)],
                      tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert damaged.name in lines[0]
    assert "python -m ae_core data" in lines[0]
    assert list(folder.glob("*.pt")) == []


def test_data_into_unwritable_folder_names_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where the data folder's parent should be")
    root = blocker / "data"
    # The folder cannot be created, so the command stops before it tries any download source.
    assert blocker.is_file()

    code, stdout, stderr = _main_in_process(["data", "--dataset", "mnist", "--offline-only", "--data-dir", str(root)])

    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "is not writable" in lines[0]
    assert str(raw_dir("mnist", root)) in lines[0]
    assert f"python -m ae_core data --dataset mnist --data-dir {root}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ---------------------------------------------------------------------------------------------
# Every option of every command with invalid values

# Invalid values per (command, option). "FILE" stands for the path of an existing regular file.
# Every option the parser defines must appear here, so a new option without cases fails
# test_invalid_value_table_covers_every_option.
NOT_A_FLAG_VALUE = ["=yes"]
INT_CASES = ["ten", "2.5", "nan", "inf", "-1"]
FLOAT_CASES = ["abc", "nan", "inf", "-inf", "-0.5", "1e400"]
FOLDER_CASES = ["FILE"]
INVALID_VALUES = {
    ("", "--verbose"): NOT_A_FLAG_VALUE,
    ("", "command"): ["fly", "Train", ""],
    ("data", "--dataset"): ["imagenet", "MNIST", ""],
    ("data", "--data-dir"): FOLDER_CASES,
    ("data", "--offline-only"): NOT_A_FLAG_VALUE,
}
for _command in ("train", "evaluate"):
    INVALID_VALUES.update({
        (_command, "--dataset"): ["cifar", "all", ""],
        (_command, "--depth"): ["4", "three", "nan", "inf", "-3"],
        (_command, "--latent-dim"): ["0", "1", "785", *INT_CASES],
        (_command, "--regularizer"): ["ridge", "Lasso", ""],
        (_command, "--strength"): [*FLOAT_CASES, "1001"],
        (_command, "--noise-var"): [*FLOAT_CASES, "10001"],
        (_command, "--epochs"): ["0", "10001", *INT_CASES],
        (_command, "--batch-size"): ["0", "60001", *INT_CASES],
        (_command, "--lr"): ["0", "11", *FLOAT_CASES],
        (_command, "--seed"): [str(2**63), *INT_CASES],
        (_command, "--data-dir"): FOLDER_CASES,
        (_command, "--checkpoint-dir"): FOLDER_CASES,
        (_command, "--device"): ["tpu", "gpu", "", "cuda:", "cuda:x", "cuda:-1"],
        (_command, "--threads"): ["0", "257", *INT_CASES],
    })
INVALID_VALUES.update({
    ("train", "--retrain"): NOT_A_FLAG_VALUE,
    ("evaluate", "--eval-noise-vars"): ["", ",", "0.1,x", "0.1,nan", "inf", "-0.1", "0.5,1e5"],
    ("evaluate", "--json"): NOT_A_FLAG_VALUE,
    ("sweep", "--datasets"): ["", "mnist,cifar", "all"],
    ("sweep", "--depths"): ["", "3,7", "3,x", "nan"],
    ("sweep", "--latents"): ["", "15,0", "15,785", "15,x", "inf"],
    ("sweep", "--regularizers"): ["", "lasso,ridge"],
    ("sweep", "--noise-vars"): ["", "0", "0.1,-0.1", "0.1,nan", "inf", "0.5,x"],
    ("sweep", "--no-denoise"): NOT_A_FLAG_VALUE,
    ("sweep", "--epochs"): ["0", *INT_CASES],
    ("sweep", "--seed"): [str(2**63), *INT_CASES],
    ("sweep", "--workers"): ["0", "65", *INT_CASES],
    ("sweep", "--threads"): ["0", "257", *INT_CASES],
    ("sweep", "--device"): ["tpu", "", "cuda:x"],
    ("sweep", "--out"): FOLDER_CASES,
    ("sweep", "--data-dir"): FOLDER_CASES,
    ("sweep", "--checkpoint-dir"): FOLDER_CASES,
})
# Valid options that make an otherwise valid command invalid as a whole.
INVALID_COMBINATIONS = [
    ["train", "--regularizer", "dropout", "--strength", "1"],
    ["train", "--regularizer", "none", "--strength", "0.1"],
    ["evaluate", "--regularizer", "dropout", "--strength", "1.5"],
]


def _parser_options() -> set[tuple[str, str]]:
    """Return (command, option) for every argument the CLI parser defines; "" is the top level."""
    options = set()

    def collect(command: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                options.add((command, action.dest))
                for name, subparser in action.choices.items():
                    collect(name, subparser)
                continue
            options.add((command, max(action.option_strings, key=len) if action.option_strings else action.dest))

    collect("", cli.build_parser())
    return options


def test_invalid_value_table_covers_every_option():
    defined = _parser_options()
    assert sorted(defined - set(INVALID_VALUES)) == []
    assert sorted(set(INVALID_VALUES) - defined) == []


def _invalid_argv(command: str, option: str, value: str, existing_file: Path) -> list[str]:
    value = str(existing_file) if value == "FILE" else value
    if command == "":
        return [f"{option}{value}", "data"] if value.startswith("=") else [value]
    if value.startswith("="):
        return [command, f"{option}{value}"]
    return [command, option, value]


INVALID_CASES = [(command, option, value) for (command, option), values in sorted(INVALID_VALUES.items())
                 for value in values]


@pytest.mark.parametrize("command, option, value", INVALID_CASES,
                         ids=[f"{c or 'top'} {o} {v!r}" for c, o, v in INVALID_CASES])
def test_invalid_value_one_line_exit_2(tmp_path, monkeypatch, command, option, value):
    existing_file = tmp_path / "a-file"
    existing_file.write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))

    code, stdout, stderr = _main_in_process(_invalid_argv(command, option, value, existing_file))

    assert code == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "error" in lines[0]
    assert "(see --help)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("argv", INVALID_COMBINATIONS, ids=[" ".join(a) for a in INVALID_COMBINATIONS])
def test_invalid_combination_one_line_exit_2(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))

    code, stdout, stderr = _main_in_process(argv)

    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "strength" in lines[0].lower() or "rate" in lines[0].lower()
    assert list(tmp_path.iterdir()) == []


def _typed_actions(parser: argparse.ArgumentParser):
    """Yield every action with a type converter, in the parser and all of its subparsers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from _typed_actions(subparser)
        elif action.type is not None:
            yield action


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400"])
def test_no_option_accepts_non_finite_number(text):
    """Options added later are covered too, because the types come from the parser itself."""
    for action in _typed_actions(cli.build_parser()):
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError:
            continue
        values = value if isinstance(value, tuple) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float))]
        assert all(math.isfinite(v) for v in numbers), f"{action.option_strings[0]} accepted {text}"
