"""The machine a run measures, and the small timing helpers every part shares."""

import contextlib
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import torch


def _lscpu() -> dict:
    """Return lscpu's "key: value" lines as a dict, or an empty dict where lscpu is missing."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in output.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def other_processes_cpu(interval_s: float = 1.0) -> float:
    """Measure the CPU time of every other process over interval_s, in cores (1.0 = one busy core)."""
    own = os.getpid()
    processes = []
    for process in psutil.process_iter():
        if process.pid == own:
            continue
        try:
            processes.append((process, process.cpu_times()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    time.sleep(interval_s)
    busy = 0.0
    for process, before in processes:
        try:
            after = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        busy += (after.user - before.user) + (after.system - before.system)
    return busy / interval_s


def describe_machine() -> dict:
    """Collect the date, command, CPU, torch build and thread count that a result belongs to."""
    cpu = _lscpu()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(part) for part in [os.path.basename(sys.executable), "-m", "benchmarks",
                                                            *sys.argv[1:]]),
        "cpu_model": cpu.get("Model name") or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "cores_per_socket": cpu.get("Core(s) per socket"),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "l3_cache": cpu.get("L3 cache"),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with torch.set_num_threads(count) and restore the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(run: Callable[[], object], repeats: int, calls: int = 1) -> float:
    """Return the median over `repeats` blocks of the mean wall time of one call, in seconds."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


def calls_for(run: Callable[[], object], block_s: float) -> int:
    """Return how many calls of `run` fill about block_s seconds, timed after one warm-up call."""
    run()
    started = time.perf_counter()
    run()
    once = max(time.perf_counter() - started, 1e-7)
    return max(1, round(block_s / once))
