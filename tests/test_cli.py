"""The command line: help, invalid options and a tiny end-to-end run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ae_core", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["data", "train", "evaluate", "sweep"])
def test_help_states_options(command, tmp_path):
    result = _run([command, "--help"], tmp_path)
    assert result.returncode == 0
    assert "usage" in result.stdout
    if command in ("train", "evaluate"):
        assert "variance (not standard deviation)" in result.stdout
        assert "--latent-dim" in result.stdout


INVALID = [
    ["train", "--dataset", "cifar"],
    ["train", "--latent-dim", "0"],
    ["train", "--latent-dim", "1000"],
    ["train", "--latent-dim", "ten"],
    ["train", "--noise-var", "-0.5"],
    ["train", "--noise-var", "nan"],
    ["train", "--noise-var", "inf"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "2.5"],
    ["train", "--depth", "4"],
    ["train", "--regularizer", "ridge"],
    ["train", "--regularizer", "dropout", "--strength", "1"],
    ["train", "--regularizer", "none", "--strength", "0.1"],
    ["train", "--lr", "0"],
    ["train", "--batch-size", "-3"],
    ["train", "--device", "tpu"],
    ["evaluate", "--eval-noise-vars", "0.1,x"],
    ["sweep", "--depths", "3,7"],
    ["sweep", "--latents", ""],
    ["sweep", "--workers", "0"],
    ["sweep", "--noise-vars", "0"],
    ["data", "--dataset", "imagenet"],
    ["fly"],
]


@pytest.mark.parametrize("args", INVALID, ids=[" ".join(a) for a in INVALID])
def test_invalid_option_one_line_exit_2(args, tmp_path):
    paths = ["--data-dir", str(tmp_path / "d"), "--checkpoint-dir", str(tmp_path / "c")]
    if args[0] == "sweep":
        paths += ["--out", str(tmp_path / "o")]
    if args[0] == "data":
        paths = paths[:2]
    full = args + paths if args[0] != "fly" else args
    result = _run(full, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_train_then_load_then_evaluate(tmp_path, data_dir):
    options = ["--latent-dim", "15", "--epochs", "1", "--data-dir", str(data_dir),
               "--checkpoint-dir", str(tmp_path / "ckpt"), "--threads", "2"]
    first = _run(["train", *options], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("trained:")
    assert "test_psnr" in first.stdout
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1

    second = _run(["train", *options], tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("loaded:")

    evaluated = _run(["evaluate", *options, "--eval-noise-vars", "0,0.5"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "noise_var 0.5" in evaluated.stdout
    assert "noisy_psnr" in evaluated.stdout


def test_evaluate_missing_checkpoint_names_train_command(tmp_path, data_dir):
    result = _run(["evaluate", "--latent-dim", "30", "--data-dir", str(data_dir),
                   "--checkpoint-dir", str(tmp_path / "ckpt")], tmp_path)
    assert result.returncode == 1
    assert "python -m ae_core train --dataset mnist --depth 3 --latent-dim 30" in result.stderr
