"""The dashboard: rerun latency after a slider change, start-up time and resident memory.

Four measurements, each in its own process where the figure needs one:
- rerun latency on a real server: `python -m streamlit run` on a free port of 127.0.0.1, and one
  session (benchmarks.session_client, Streamlit's own websocket protocol) moves the noise slider
  between two variances. Each figure runs from sending the new slider value to the server's
  "script finished" message, so it bounds the server's time from above.
- rerun latency in process: AppTest runs streamlit_app.py in this process, the same slider moves,
  and each `at.run()` is timed; AppTest adds its own work on top of the script.
- start-up: `python -m streamlit run` on a free port of 127.0.0.1, and headless Chromium driven by
  Playwright polls the page until the reconstruction images are loaded.
- memory: a fresh process (benchmarks.app_memory) walks every plain configuration with AppTest,
  which loads both datasets and every cached model, and reports its own RSS.
"""

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

APP = Path("streamlit_app.py")

# The two slider values a rerun alternates between: both are trained denoiser variances.
RERUN_VARS = (0.25, 0.5)
# The page shows this many test images by default, in three rows: originals, noisy inputs, reconstructions.
DEFAULT_SHOWN = 8
NOISE_LABEL = "Noise variance σ²"

CHROMIUM = "/usr/bin/chromium"
# Flags for Debian's Chromium in a container without a GPU or network. Playwright's own browser
# download is not used.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
START_TIMEOUT_S = 120.0
POLL_S = 0.05

# Counts the loaded images of the page. The reconstructions are the third row of DEFAULT_SHOWN images.
_LOADED_IMAGES_JS = """() => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
    .filter(img => img.complete && img.naturalWidth > 0).length"""


def app_environment(data_dir: Path, checkpoint_dir: Path) -> dict:
    """Return os.environ with the page's data and checkpoint folders set."""
    env = dict(os.environ)
    env["AE_DATA_DIR"] = str(data_dir.resolve())
    env["AE_CHECKPOINT_DIR"] = str(checkpoint_dir.resolve())
    return env


@contextlib.contextmanager
def _environ(values: dict):
    previous = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(previous)


def wait_until_idle(process: psutil.Process, max_s: float = 60.0, busy_fraction: float = 0.2) -> float:
    """Wait until a process uses less than busy_fraction of one core over 0.5 s, and return the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_s:
        if process.cpu_percent(interval=0.5) < busy_fraction * 100:
            break
    return time.perf_counter() - started


def measure_rerun(data_dir: Path, checkpoint_dir: Path, count: int) -> dict:
    """Time `count` reruns after a noise-slider change, after every slider value's scores are cached."""
    from streamlit.testing.v1 import AppTest

    with _environ(app_environment(data_dir, checkpoint_dir)):
        at = AppTest.from_file(str(APP.resolve()), default_timeout=120)
        at.run()
        if at.exception:
            raise RuntimeError(f"{APP} raised on its first run: {at.exception[0].message}")

        # warm-up: load both denoisers, then let the background thread score every slider value
        for noise_var in RERUN_VARS:
            at.slider(key="noise_var").set_value(noise_var).run()
        idle_wait_s = wait_until_idle(psutil.Process())

        samples = []
        for i in range(count):
            slider = at.slider(key="noise_var").set_value(RERUN_VARS[i % 2])
            started = time.perf_counter()
            slider.run()
            samples.append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(f"{APP} raised during the reruns: {at.exception[0].message}")
        images = len(at.image)
    return {"count": count, "values": RERUN_VARS, "median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples), "samples_s": samples, "image_rows": images, "idle_wait_s": idle_wait_s}


def measure_server_rerun(data_dir: Path, checkpoint_dir: Path, count: int) -> dict:
    """Time `count` slider moves of one session on a real server, after every slider value's scores are cached."""
    import asyncio

    from .session_client import SessionClient

    async def run_session(url: str, server: psutil.Process) -> tuple[float, list[float]]:
        session = SessionClient(url)
        try:
            opened_s = await session.open(START_TIMEOUT_S)
            for noise_var in RERUN_VARS:  # warm-up: load the models and score both values
                await session.set_slider(NOISE_LABEL, noise_var, START_TIMEOUT_S)
            await asyncio.to_thread(wait_until_idle, server)  # the background thread scores every slider value
            samples = [await session.set_slider(NOISE_LABEL, RERUN_VARS[i % 2], START_TIMEOUT_S) for i in range(count)]
            if session.exceptions:
                raise RuntimeError(f"the page raised: {session.exceptions[0]}")
        finally:
            await session.close()
        return opened_s, samples

    server, url, _ = _start_server(app_environment(data_dir, checkpoint_dir))
    try:
        _wait_for_health(url, server)
        opened_s, samples = asyncio.run(run_session(url, psutil.Process(server.pid)))
    except Exception as error:
        tail = _stop_server(server)
        raise RuntimeError(f"{error}. The server log ends with:\n{tail}") from error
    _stop_server(server)
    return {"count": count, "values": RERUN_VARS, "median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples), "samples_s": samples, "first_run_s": opened_s}


def _wait_for_health(url: str, server: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(POLL_S)
    raise TimeoutError(f"{url}_stcore/health did not respond within {START_TIMEOUT_S:.0f} s")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(env: dict) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return server, f"http://127.0.0.1:{port}/", started


def _stop_server(server: subprocess.Popen) -> str:
    """Stop the server and return the end of its stderr, for error messages."""
    server.terminate()
    try:
        _, stderr = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        _, stderr = server.communicate()
    return stderr.decode(errors="replace")[-2000:]


def _time_one_start(browser, env: dict) -> tuple[float, float]:
    """Start a server and poll until the reconstructions are loaded. Returns (seconds, server RSS in MiB)."""
    server, url, started = _start_server(env)
    page = browser.new_page()
    try:
        while True:
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise TimeoutError(f"no reconstructions on {url} within {START_TIMEOUT_S:.0f} s")
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            try:
                page.goto(url, wait_until="commit", timeout=5000)
                break
            except Exception:  # noqa: BLE001 - Playwright raises its own Error while the port is closed
                time.sleep(POLL_S)
        while page.evaluate(_LOADED_IMAGES_JS) < 3 * DEFAULT_SHOWN:
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise TimeoutError(f"no reconstructions on {url} within {START_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
        rss_mib = psutil.Process(server.pid).memory_info().rss / 2**20
    except Exception as error:
        tail = _stop_server(server)
        raise RuntimeError(f"{error}. The server log ends with:\n{tail}") from error
    finally:
        page.close()
    _stop_server(server)
    return seconds, rss_mib


def measure_start(data_dir: Path, checkpoint_dir: Path, starts: int) -> dict:
    """Time process start to the first loaded reconstructions, `starts` times after one unrecorded start."""
    from playwright.sync_api import sync_playwright

    env = app_environment(data_dir, checkpoint_dir)
    seconds, rss = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            _time_one_start(browser, env)  # warms the file cache and Chromium, not recorded
            for _ in range(starts):
                elapsed, rss_mib = _time_one_start(browser, env)
                seconds.append(elapsed)
                rss.append(rss_mib)
        finally:
            browser.close()
    return {"method": "streamlit run + headless Chromium (Playwright), until 3 rows of "
                      f"{DEFAULT_SHOWN} images are loaded",
            "seconds": seconds, "median_s": statistics.median(seconds), "rss_mib": statistics.median(rss)}


def measure_memory(data_dir: Path, checkpoint_dir: Path) -> dict:
    """Run benchmarks.app_memory in a fresh process and return its report."""
    command = [sys.executable, "-m", "benchmarks.app_memory"]
    done = subprocess.run(command, env=app_environment(data_dir, checkpoint_dir), capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with code {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(data_dir: Path, checkpoint_dir: Path, quick: bool) -> dict:
    """Run the three page measurements. A missing app or browser gives a note instead of a figure."""
    result = {"notes": []}
    if not APP.exists():
        result["notes"].append(f"{APP} not found: run the benchmark from the repository root")
        return result
    result["server_rerun"] = measure_server_rerun(data_dir, checkpoint_dir, count=10 if quick else 40)
    result["rerun"] = measure_rerun(data_dir, checkpoint_dir, count=6 if quick else 30)
    if result["rerun"]["image_rows"] < 3:
        result["notes"].append(f"the reruns showed {result['rerun']['image_rows']} image rows, not 3: no cached "
                               f"model for the slider values {RERUN_VARS} in {checkpoint_dir}")
    if Path(CHROMIUM).exists():
        result["cold_start"] = measure_start(data_dir, checkpoint_dir, starts=1 if quick else 3)
    else:
        result["notes"].append(f"{CHROMIUM} not found, start-up time not measured")
    if not quick:
        result["memory"] = measure_memory(data_dir, checkpoint_dir)
    return result
