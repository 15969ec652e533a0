"""The dashboard through Streamlit's AppTest: real script, real data, real checkpoints, no mocks."""

import base64
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from ae_core import explore, figures
from ae_core.store import CheckpointStore
from helpers import TINY_DENOISER, TINY_LASSO, one_torch_thread

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
# The first run loads a dataset (SHA-256 check included) and scores the test set.
RUN_TIMEOUT_S = 120
RETRAIN_LIMIT_S = 300


@pytest.fixture(autouse=True)
def single_torch_thread():
    with one_torch_thread():
        yield


def open_app(monkeypatch, checkpoint_dir: Path, data_dir: Path, tiny: bool = True) -> AppTest:
    """Point the app at the folders, run it once and, with tiny=True, select the tiny models."""
    monkeypatch.setenv("AE_CHECKPOINT_DIR", str(checkpoint_dir))
    monkeypatch.setenv("AE_DATA_DIR", str(data_dir))
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.run()
    if tiny:
        at.number_input(key="epochs").set_value(1)
        at.select_slider(key="latent_dim").set_value(15)
        at.run()
    return at


def texts(at: AppTest) -> str:
    """Join every message, caption, heading and markdown text of the page."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [element.value for element in getattr(at, kind)]
    return "\n".join(parts)


def metric_values(at: AppTest) -> dict:
    return {metric.label: metric.value for metric in at.metric}


def image_rows(at: AppTest) -> list:
    """Return the image rows: originals, noisy inputs, reconstructions (when shown)."""
    return list(at.image)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def snapshot(at: AppTest) -> tuple:
    """Everything a control may change: headings and captions, metrics and image captions."""
    captions = tuple(tuple(row.captions) for row in image_rows(at))
    return texts(at), tuple(sorted(metric_values(at).items())), captions


def test_empty_cache_says_what_is_missing(monkeypatch, tmp_path, data_dir):
    at = open_app(monkeypatch, tmp_path / "empty", data_dir, tiny=False)

    assert not at.exception
    assert "is not trained yet" in texts(at)
    assert at.button(key="train_selected").label == "Train this model"
    assert len(image_rows(at)) == 2, "originals and noisy inputs are shown even without a model"
    assert not at.error


def test_missing_data_names_the_fix(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "checkpoints", tmp_path / "no-data", tiny=False)

    assert not at.exception
    assert len(at.error) == 1
    assert "python -m ae_core data" in at.error[0].value
    assert at.button(key="retrain").disabled


def test_cached_model_shows_everything(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)

    assert not at.exception
    assert "not trained yet" not in texts(at)
    rows = image_rows(at)
    assert len(rows) == 3
    assert len(rows[2].captions) == 8
    assert all(caption.endswith(" dB") for caption in rows[2].captions)
    labels = list(metric_values(at))
    assert labels == ["Reconstruction · shown images", "Reconstruction · test set"]
    assert "mean of per-image PSNR" in texts(at)
    assert [c["layout"]["title"]["text"] for c in charts(at)] == [f"Loss per epoch: {TINY_LASSO.label}"]


def test_variance_zero_adds_no_noise(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    originals, noisy = image_rows(at)[:2]

    assert at.slider(key="noise_var").value == 0.0
    assert noisy.value == originals.value, "data: URLs carry the pixels, so equal URLs mean equal images"
    assert set(noisy.captions) == {"no noise"}
    assert not any("Noisy input" in label for label in metric_values(at))


def test_noise_slider_uses_nearest_denoiser(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    at.slider(key="noise_var").set_value(0.25).run()
    at_025 = metric_values(at)
    noisy_captions_025 = image_rows(at)[1].captions
    at.slider(key="noise_var").set_value(0.3).run()
    at_030 = metric_values(at)

    assert not at.exception
    assert "Noisy input · test set" in at_025
    assert at_025 != at_030
    assert "Denoised · shown images" in at_030
    assert "denoiser trained at variance 0.25 (the nearest to 0.3)" in texts(at)
    assert image_rows(at)[1].captions != noisy_captions_025
    assert image_rows(at)[1].value != image_rows(at)[0].value, "the noisy row shows the originals"
    assert "Standard deviation σ = 0.548" in texts(at)


def test_missing_denoiser_falls_back_to_plain(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    at.slider(key="noise_var").set_value(0.5).run()

    assert not at.exception
    assert "denoiser trained at variance 0.5 is not trained yet" in texts(at)
    assert "Plain autoencoder's reconstruction of the noisy input" in texts(at)
    assert "Plain autoencoder · shown images" in metric_values(at)
    assert at.button(key="train_denoiser").label == "Train the denoiser at variance 0.5"


CONTROLS = [
    ("dataset", lambda at: at.selectbox(key="dataset").set_value("fashion-mnist")),
    ("depth", lambda at: at.radio(key="depth").set_value(5)),
    ("latent_dim", lambda at: at.select_slider(key="latent_dim").set_value(30)),
    ("regularizer", lambda at: at.radio(key="regularizer").set_value("dropout")),
    ("noise_var", lambda at: at.slider(key="noise_var").set_value(0.1)),
    ("n_images", lambda at: at.slider(key="n_images").set_value(5)),
    ("draw_images", lambda at: at.button(key="draw_images").click()),
    ("epochs", lambda at: at.number_input(key="epochs").set_value(2)),
    ("train_seed", lambda at: at.number_input(key="train_seed").set_value(7)),
]


@pytest.mark.parametrize("name, change", CONTROLS, ids=[name for name, _ in CONTROLS])
def test_sidebar_control_changes_page(monkeypatch, tiny_checkpoints, data_dir, name, change):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    before = snapshot(at)
    change(at)
    at.run()

    assert not at.exception
    assert snapshot(at) != before, f"changing {name} left the page as it was"


def test_regularizer_caption_shows_strength(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    lasso_text = texts(at)
    at.radio(key="regularizer").set_value("dropout").run()

    assert "Lasso lambda = 1e-05" in lasso_text
    assert "Dropout p = 0.2" in texts(at)


def test_image_count_and_seed(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)
    first_originals = image_rows(at)[0].captions
    at.slider(key="n_images").set_value(12).run()
    more_originals = image_rows(at)[0].captions
    at.button(key="draw_images").click().run()

    assert len(more_originals) == 12
    assert more_originals[:8] == first_originals, "a larger count keeps the images already shown"
    assert "Test images drawn with seed 1." in texts(at)
    assert image_rows(at)[0].captions != more_originals


def test_chart_tabs_draw_from_cache(monkeypatch, tiny_checkpoints, data_dir):
    at = open_app(monkeypatch, tiny_checkpoints, data_dir)

    at.session_state["chart_tab"] = "Lasso vs Dropout"
    at.run()
    regularizer_traces = [trace["name"] for trace in charts(at)[0]["data"]]
    at.session_state["chart_tab"] = "PSNR vs noise"
    at.run()
    psnr_chart = charts(at)[0]
    at.session_state["chart_tab"] = "All configurations"
    at.run()
    overview_tables = [len(frame.value) for frame in at.dataframe]

    assert not at.exception
    assert regularizer_traces == ["Lasso 1e-05", "Dropout 0.2"]
    assert [trace["name"] for trace in psnr_chart["data"]] == ["denoised: depth 3, latent 15, Lasso", "noisy input"]
    assert psnr_chart["data"][0]["x"] == [0.25]
    assert overview_tables == [2, 37], "best-per-group table, then 32 plain + 5 mnist denoisers"
    assert "2 of 32" in texts(at)


def test_address_names_apply_bad_values_reported(monkeypatch, tiny_checkpoints, data_dir):
    monkeypatch.setenv("AE_CHECKPOINT_DIR", str(tiny_checkpoints))
    monkeypatch.setenv("AE_DATA_DIR", str(data_dir))
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    for key, value in {"dataset": "fashion-mnist", "regularizer": "Dropout", "depth": "5", "noise_var": "5",
                       "epochs": "1.5"}.items():
        at.query_params[key] = value
    at.run()

    assert not at.exception
    assert at.selectbox(key="dataset").value == "fashion-mnist"
    assert at.radio(key="regularizer").value == "dropout"
    assert at.radio(key="depth").value == 5
    assert at.slider(key="noise_var").value == 0.0
    assert at.number_input(key="epochs").value in (1, 10)  # Streamlit cuts 1.5 to 1
    notes = [warning.value for warning in at.warning if warning.value.startswith("The address")]
    assert len(notes) == 1
    assert "`noise_var=5`" in notes[0]
    assert "`epochs=1.5`" in notes[0]
    assert "dataset" not in notes[0]
    assert "regularizer" not in notes[0]


def test_damaged_checkpoint_offers_retrain(monkeypatch, tmp_path, tiny_checkpoints, data_dir):
    folder = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints, folder)
    CheckpointStore(folder).path(TINY_LASSO).write_bytes(b"not a checkpoint")
    at = open_app(monkeypatch, folder, data_dir)

    assert not at.exception
    assert len(at.error) == 1
    assert "cannot be used: cannot be read" in at.error[0].value
    assert at.button(key="retrain_damaged").label == "Retrain this model"


def test_retrain_replaces_model_for_the_page(monkeypatch, tmp_path, tiny_checkpoints, data_dir):
    folder = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints, folder)
    path = CheckpointStore(folder).path(TINY_LASSO)
    old_stamp = path.stat().st_mtime_ns
    at = open_app(monkeypatch, folder, data_dir)
    old_caption = next(c.value for c in at.caption if c.value.startswith("Plain model: checkpoint written"))

    at.button(key="retrain").click().run()
    started_with_progress = len(at.get("progress")) == 1
    # The session that started the job shows its live curve. Another session shows the progress,
    # with the curve switched off until its user turns it on.
    own_curve = [toggle.value for toggle in at.toggle if toggle.label == "Live loss curve"]
    other = open_app(monkeypatch, folder, data_dir)
    other_curve = [toggle.value for toggle in other.toggle if toggle.label == "Live loss curve"]
    other_progress = len(other.get("progress"))
    own_cancel = [button.key for button in at.button if button.key.startswith("cancel_")]
    other_cancel = [button.key for button in other.button if button.key.startswith("cancel_")]
    deadline = time.monotonic() + RETRAIN_LIMIT_S
    slider_values = [0.1, 0.25, 0.0]  # the user keeps moving the slider while the job runs
    polls = 0
    while "Finished in" not in texts(at) and time.monotonic() < deadline:
        time.sleep(1.0)
        at.slider(key="noise_var").set_value(slider_values[polls % len(slider_values)])
        at.run()
        polls += 1
    at.slider(key="noise_var").set_value(0.0).run()
    new_caption = next(c.value for c in at.caption if c.value.startswith("Plain model: checkpoint written"))

    assert not at.exception
    assert started_with_progress, "a running job shows a progress bar"
    assert own_curve == [True]
    assert other_curve == [False]
    assert other_progress == 1
    assert len(own_cancel) == 1
    assert other_cancel == [], "only the page that started a job can cancel it"
    assert "Finished in" in texts(at), f"retraining did not finish within {RETRAIN_LIMIT_S} s"
    assert path.stat().st_mtime_ns != old_stamp
    assert new_caption != old_caption, "the loss-curve caption still describes the old checkpoint"
    assert charts(at)[0]["layout"]["title"]["text"] == f"Loss per epoch: {TINY_LASSO.label}"


def test_denoiser_checkpoint_of_fixture_exists(tiny_checkpoints):
    assert CheckpointStore(tiny_checkpoints).inspect(TINY_DENOISER).status == "cached"


def test_engine_never_imports_streamlit():
    # __main__ is left out: importing it would run the CLI.
    code = ("import importlib, pkgutil, sys, ae_core\n"
            "names = [m.name for m in pkgutil.iter_modules(ae_core.__path__) if m.name != '__main__']\n"
            "for name in names:\n"
            "    importlib.import_module(f'ae_core.{name}')\n"
            "print(len(names), 'streamlit' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(APP).parent)

    assert result.returncode == 0, result.stderr
    count, imported = result.stdout.split()
    assert int(count) >= 10, "every engine module is imported"
    assert imported == "False"


# ---------------------------------------------------------------------------------------------
# The app's pure helpers in ae_core.explore and ae_core.figures


@pytest.mark.parametrize("slider, trained", [(0.05, 0.1), (0.1, 0.1), (0.15, 0.1), (0.2, 0.25), (0.3, 0.25),
                                             (0.4, 0.5), (0.6, 0.5), (0.65, 0.75), (0.9, 1.0), (1.0, 1.0)])
def test_nearest_trained_variance(slider, trained):
    assert explore.nearest_trained_var(slider) == trained


def test_nearest_trained_variance_cases():
    assert explore.nearest_trained_var(0.0) is None
    assert explore.nearest_trained_var(0.175, (0.1, 0.25)) == 0.1, "a tie goes to the lower variance"
    assert explore.denoiser_for(TINY_LASSO, 0.3) == TINY_LASSO.with_(noise_var=0.25)


def test_shown_images_without_noise_equal_originals():
    test_x = torch.rand(50, 784)
    noise = torch.randn(50, 784)
    indices = explore.pick_test_indices(50, 6, seed=3)
    images = explore.reconstruct_shown(None, test_x, noise, indices, 0.0)
    noisy = explore.reconstruct_shown(None, test_x, noise, indices, 0.5)

    assert np.array_equal(images.x_noisy, images.x)
    assert set(explore.psnr_caption(v) for v in images.noisy_psnr) == {"identical"}
    assert images.x_hat is None
    assert not np.array_equal(noisy.x_noisy, noisy.x)
    assert np.array_equal(noisy.x, test_x[torch.from_numpy(indices)].numpy())


def test_png_urls_decode_to_same_pixels():
    from PIL import Image

    images = torch.rand(5, 784, generator=torch.Generator().manual_seed(3)).numpy()
    images[0] = 0.0
    images[1] = 1.0
    expected = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    for url, pixels in zip(explore.png_data_urls(images), expected, strict=True):
        prefix, payload = url.split(",", 1)
        assert prefix == "data:image/png;base64"
        decoded = Image.open(io.BytesIO(base64.b64decode(payload)))
        decoded.load()  # checks every chunk's CRC and the zlib stream
        assert decoded.mode == "L"
        assert decoded.size == (28, 28)
        assert np.array_equal(np.asarray(decoded), pixels)


def test_pick_test_indices_grow_stably():
    assert list(explore.pick_test_indices(100, 8, 1)) == list(explore.pick_test_indices(100, 12, 1)[:8])
    assert len(set(explore.pick_test_indices(100, 100, 1))) == 100
    with pytest.raises(ValueError, match="count must be from 1 to 100"):
        explore.pick_test_indices(100, 0, 1)


def test_score_cache_prefetches_in_background():
    cache = explore.ScoreCache()
    calls = []

    def task(key):
        return key, lambda: calls.append(key) or {"value": key}

    cache.prefetch([task("a"), task("b")])
    deadline = time.monotonic() + 10
    while not cache.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    idle_after_prefetch = cache.idle()
    cache.prefetch([task("a")])
    cache.close()

    assert idle_after_prefetch
    assert cache.get("a") == {"value": "a"}
    assert cache.get("b") == {"value": "b"}
    assert calls == ["a", "b"], "a stored key is not computed again"
    assert cache.get_or_compute("c", lambda: {"value": "c"}) == {"value": "c"}


def test_score_cache_computes_key_once():
    cache = explore.ScoreCache()
    calls = []
    release = threading.Event()

    def slow_compute():
        calls.append(threading.current_thread().name)
        release.wait(10)
        return {"value": 1}

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow_compute)),
                                name=f"session-{index}") for index in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # gives every thread time to request the key
    release.set()
    for thread in threads:
        thread.join(10)

    assert len(calls) == 1
    assert results == [{"value": 1}] * 5

    # A failed computation is not stored, so the next caller computes the key again.
    def failing_compute():
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("bad", failing_compute)
    assert cache.get_or_compute("bad", lambda: {"value": 2}) == {"value": 2}


def test_overview_figure_marks_missing_and_best():
    rows = [
        {"dataset": "mnist", "depth": 3, "latent_dim": 15, "regularizer": "lasso", "noise_var": 0.0,
         "status": "cached", "test_loss": 0.02},
        {"dataset": "mnist", "depth": 3, "latent_dim": 30, "regularizer": "lasso", "noise_var": 0.0,
         "status": "cached", "test_loss": 0.01},
        {"dataset": "mnist", "depth": 3, "latent_dim": 50, "regularizer": "lasso", "noise_var": 0.0,
         "status": "damaged", "test_loss": None},
    ]
    figure = figures.overview_figure(rows, datasets=("mnist",))
    heatmap, gaps = figure.data

    assert list(heatmap.text[0][:2]) == ["0.0200", "0.0100 ★"]
    assert list(gaps.text) == ["damaged", "not in grid"]
    assert list(gaps.x) == ["50", "100"]
