"""The dashboard in a real Chromium, served by a real `streamlit run` on 127.0.0.1."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Flags that let Debian's chromium run headless in a container without reaching the internet.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The query parameters select the tiny models: mnist, depth 3, Lasso, latent 15, 1 epoch.
QUERY = "?latent_dim=15&epochs=1"
START_LIMIT_S = 90
# True once no rerun is in flight and every shown image has finished loading with real pixels.
IMAGES_LOADED = """() => {
    if (document.querySelector("[data-testid='stStatusWidget']")) return false;
    const images = [...document.querySelectorAll("[data-testid='stImage'] img")];
    return images.length >= 24 && images.every(img => img.complete && img.naturalWidth > 0);
}"""
PAGE_LIMIT_MS = 180_000


def require_browser():
    """Return playwright's sync API; skip without chromium, except on CI where it must be present."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (install it with: apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is missing (pip install -r requirements-test.txt)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


def wait_for_health(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with code {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not answer /_stcore/health within {START_LIMIT_S} s:\n{log_path.read_text()[-3000:]}")


def image_captions(page) -> list[str]:
    return page.locator("[data-testid='stImageCaption']").all_inner_texts()


def metric_texts(page) -> dict:
    labels = page.locator("[data-testid='stMetricLabel']").all_inner_texts()
    values = page.locator("[data-testid='stMetricValue']").all_inner_texts()
    return dict(zip((label.strip() for label in labels), values))


@pytest.mark.browser
def test_noise_slider_updates_psnr_in_browser(tmp_path, tiny_checkpoints, data_dir):
    sync_playwright = require_browser()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "streamlit.log"
    # One torch thread: the tiny model needs no more, and the test machine may be shared.
    env = dict(os.environ, AE_CHECKPOINT_DIR=str(tiny_checkpoints), AE_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    ARTIFACTS.mkdir(exist_ok=True)

    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(url, server, log_path)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.goto(url + QUERY)
                page.wait_for_selector("[data-testid='stImage'] img", timeout=PAGE_LIMIT_MS)
                page.wait_for_selector("[data-testid='stMetricValue']", timeout=PAGE_LIMIT_MS)
                before = metric_texts(page)
                captions_before = image_captions(page)

                thumb = page.get_by_role("slider", name="Noise variance σ²")
                thumb.focus()
                for _ in range(5):
                    thumb.press("ArrowRight")
                # Each key press reruns the script; the last rerun names variance 0.25 and its std.
                page.get_by_text("variance 0.25 (σ = 0.500)").wait_for(timeout=PAGE_LIMIT_MS)
                page.get_by_text("Noisy input · shown images").wait_for(timeout=PAGE_LIMIT_MS)
                page.wait_for_function(IMAGES_LOADED, timeout=PAGE_LIMIT_MS)
                after = metric_texts(page)
                captions_after = image_captions(page)
                slider_value = thumb.get_attribute("aria-valuetext")
                exceptions = page.locator("[data-testid='stException']").count()
                page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    log_text = log_path.read_text()
    assert slider_value == "0.25"
    assert "Reconstruction · shown images" in before
    assert "Noisy input · shown images" not in before
    assert after.get("Noisy input · shown images", "").endswith(" dB")
    assert after != before
    assert captions_before[8:16] == ["no noise"] * 8, "the noisy row shows no noise at variance 0"
    assert all(caption.endswith(" dB") for caption in captions_after[8:16])
    assert captions_after[16:24] != captions_before[16:24], "the reconstructions' PSNR did not change"
    assert exceptions == 0
    assert "Traceback" not in log_text, log_text[-3000:]
    assert (ARTIFACTS / "browser.png").stat().st_size > 10_000
