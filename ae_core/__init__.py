"""Engine of the autoencoder lab: data, models, training, metrics, checkpoints and the sweep.

This package never imports streamlit; the dashboard builds on it.
"""

from .config import DATASETS, DEPTHS, LATENT_GRID, NOISE_VARS, REGULARIZERS, ConfigError, ModelConfig

__all__ = ["DATASETS", "DEPTHS", "LATENT_GRID", "NOISE_VARS", "REGULARIZERS", "ConfigError", "ModelConfig"]
