"""The machine a run measures, and the small timing helpers every part shares."""

import contextlib
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
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


def _cpu_seconds_of_others() -> dict:
    """Return pid -> user + system CPU seconds of every process that is not this one or its child."""
    own = psutil.Process()
    excluded = {own.pid} | {child.pid for child in own.children(recursive=True)}
    seconds = {}
    for process in psutil.process_iter():
        if process.pid in excluded:
            continue
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def other_processes_cpu(interval_s: float = 1.0) -> float:
    """Measure the CPU use of processes outside this benchmark over interval_s, in cores (1.0 = one busy core).

    A process that starts or ends inside the interval is not counted.
    """
    before = _cpu_seconds_of_others()
    time.sleep(interval_s)
    after = _cpu_seconds_of_others()
    busy = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
    return busy / interval_s


class LoadMonitor:
    """A background thread that samples other_processes_cpu() for as long as the run lasts.

    Other programs on the machine slow every figure down, so each part of the run reports the
    mean load that it ran under.
    """

    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (end of the interval on perf_counter, cores)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="load-monitor", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), other_processes_cpu(self.interval_s)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        """Return the mean load of the samples that ended between start and end, or None without one."""
        inside = [cores for stamp, cores in self.samples if start <= stamp <= end]
        return sum(inside) / len(inside) if inside else None


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
