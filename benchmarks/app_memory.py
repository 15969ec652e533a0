"""Resident memory of the dashboard with both datasets and every cached model loaded.

Run as `python -m benchmarks.app_memory` with AE_DATA_DIR and AE_CHECKPOINT_DIR set. benchmarks.page
starts it in a fresh process, so that nothing else lives in the measured process. AppTest selects
every plain grid configuration in turn. Each selection loads the plain model, and the page's
score prefetch loads the cached denoisers of the same architecture. The last line of the output
is a JSON object.
"""

import json
import sys
import time

import psutil
from streamlit.testing.v1 import AppTest

from ae_core.config import DATASETS, DEFAULT_EPOCHS, DEFAULT_SEED, NOISE_VARS
from ae_core.explore import plain_grid
from ae_core.store import CheckpointStore

from .page import APP, wait_until_idle


def main() -> int:
    process = psutil.Process()
    at = AppTest.from_file(str(APP.resolve()), default_timeout=120)
    at.run()
    if at.exception:
        print(f"error: {APP} raised on its first run: {at.exception[0].message}", file=sys.stderr)
        return 1
    wait_until_idle(process)
    first_rss = process.memory_info().rss

    store = CheckpointStore()
    started = time.perf_counter()
    cached = 0
    for config in plain_grid(DEFAULT_EPOCHS, DEFAULT_SEED):
        at.selectbox(key="dataset").set_value(config.dataset)
        at.radio(key="depth").set_value(config.depth)
        at.select_slider(key="latent_dim").set_value(config.latent_dim)
        at.radio(key="regularizer").set_value(config.regularizer)
        at.run()
        if at.exception:
            print(f"error: {APP} raised for {config.label}: {at.exception[0].message}", file=sys.stderr)
            return 1
        cached += store.path(config).exists()
        cached += sum(store.path(config.with_(noise_var=float(var))).exists() for var in NOISE_VARS)
    walk_s = time.perf_counter() - started
    wait_until_idle(process)

    print(json.dumps({
        "method": "AppTest in a fresh process, every plain grid configuration selected in turn",
        "datasets": list(DATASETS),
        "models_loaded": cached,
        "rss_mib": process.memory_info().rss / 2**20,
        "rss_after_first_run_mib": first_rss / 2**20,
        "walk_seconds": walk_s,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
