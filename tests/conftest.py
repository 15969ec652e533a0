import os
from pathlib import Path

import pytest

from ae_core.config import DATASETS
from ae_core.data import DataError, prepare_dataset


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Data folder with both datasets prepared and verified: $AE_DATA_DIR, else data/ in the repository.

    Preparation is a quick check when the files are already valid. A failure fails the test with
    the DataError message instead of skipping it, so missing data never passes silently.
    """
    env_value = os.environ.get("AE_DATA_DIR")
    folder = Path(env_value) if env_value else Path(__file__).resolve().parents[1] / "data"
    for name in DATASETS:
        try:
            prepare_dataset(name, folder)
        except DataError as error:
            pytest.fail(f"cannot prepare {name} in {folder}: {error}", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir) -> Path:
    """Checkpoint folder with three tiny mnist models (depth 3, latent 15, 1 epoch on the first
    12,000 training images): Lasso, its Dropout twin and the Lasso denoiser at variance 0.25.
    Tests that change files copy the folder first.
    """
    from helpers import train_tiny_models

    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    train_tiny_models(folder, data_dir)
    return folder
