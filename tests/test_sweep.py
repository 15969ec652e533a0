"""A tiny sweep on the real MNIST data: phases, best-model choice, files written, caching."""

import csv
import json

from ae_core.config import ModelConfig
from ae_core.store import CheckpointStore
from ae_core.sweep import SweepPlan, format_summary, run_sweep, write_results


def test_tiny_sweep_trains_caches_and_summarises(tmp_path, data_dir):
    plan = SweepPlan(datasets=("mnist",), depths=(3,), latents=(15,), regularizers=("lasso", "dropout"),
                     noise_vars=(0.5,), epochs=1)
    result = run_sweep(plan, tmp_path / "ckpt", data_dir, workers=2, threads=1)

    # phase 1 gives two plain models, phase 2 one denoiser of the better one
    assert len(result.rows) == 3
    plain = [r for r in result.rows if r["noise_var"] == 0]
    assert {r["regularizer"] for r in plain} == {"lasso", "dropout"}
    best = min(plain, key=lambda r: r["test_loss"])
    denoiser = result.denoising["mnist"][0]
    assert denoiser["regularizer"] == best["regularizer"]
    assert denoiser["noise_var"] == 0.5
    assert denoiser["test_psnr"] > denoiser["noisy_psnr"]
    assert result.best[("mnist", "lasso")]["regularizer"] == "lasso"
    assert all(r["source"] == "trained" for r in result.rows)

    store = CheckpointStore(tmp_path / "ckpt")
    config = ModelConfig.make(regularizer=best["regularizer"], latent_dim=15, epochs=1, noise_var=0.5)
    assert store.load(config) is not None

    paths = write_results(result, tmp_path / "out")
    with open(paths[0]) as handle:
        assert len(list(csv.DictReader(handle))) == 3
    summary = json.loads(paths[2].read_text())
    assert len(summary["best_per_dataset_and_regularizer"]) == 2
    assert summary["denoising"][0]["noise_var"] == 0.5
    assert "Denoising" in format_summary(result)
    assert "| mnist | lasso | 3 | 15 |" in paths[3].read_text()

    again = run_sweep(plan, tmp_path / "ckpt", data_dir, workers=1, threads=1)
    assert all(r["source"] == "loaded" for r in again.rows)
    assert [r["test_loss"] for r in again.rows] == [r["test_loss"] for r in result.rows]
