"""The dashboard's page code, imported once per process by streamlit_app.py.

Streamlit executes the app script again on every rerun; code in an imported module runs once. So
the cached loaders, the dataclasses and the drawing functions live here, and a rerun only calls
main(). The data folder comes from $AE_DATA_DIR (default ./data) and the checkpoint folder from
$AE_CHECKPOINT_DIR (default ./checkpoints). The page has no input for a path. PSNR values use data
range 1, and a mean PSNR is the mean of per-image PSNR.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from ae_core import explore, figures
from ae_core.checkpoint import CheckpointError, load_checkpoint
from ae_core.config import (DATASETS, DEFAULT_EPOCHS, DEFAULT_SEED, DEPTHS, LATENT_GRID, NOISE_VARS, REGULARIZERS,
                            ModelConfig, default_strength)
from ae_core.data import (CLASS_NAMES, DISPLAY_NAMES, TEST_SIZE, DataError, DatasetSplits, default_data_dir, load_dataset,
                          python_command)
from ae_core.explore import EntrySummary
from ae_core.jobs import JobManager, JobView
from ae_core.metrics import eval_standard_normal
from ae_core.model import Autoencoder
from ae_core.store import CheckpointStore
from ae_core.train import pick_device

logger = logging.getLogger("autoencoder_lab")

REGULARIZER_NAMES = {"lasso": "Lasso", "dropout": "Dropout", "none": "none"}
STRENGTH_NAMES = {"lasso": "lambda", "dropout": "p"}
# Shown size of each 28 x 28 test image in CSS pixels. The browser enlarges it without smoothing
# (PIXELATED_CSS). The images go to st.image as PNG data: URLs, which Streamlit passes through
# unchanged; its own numpy path (range check, PIL conversion, media file) cost several times more
# per rerun.
IMAGE_WIDTH = 84
PIXELATED_CSS = "<style>[data-testid='stImage'] img { image-rendering: pixelated; }</style>"
LIVE_REFRESH_S = 1.0
WATCH_REFRESH_S = 3.0
LIVE_CHART_HEIGHT = 280
# The selection lives in the URL's query parameters, so a view can be bookmarked or shared.
# Streamlit ignores a parameter value that is not among the widget's options.
BIND = "query-params"
PSNR_HELP = "PSNR in dB with data range 1; the mean is the mean of per-image PSNR values."


@dataclass(frozen=True)
class Selection:
    """Everything the sidebar selects."""

    config: ModelConfig  # the plain autoencoder (noise_var 0) of the chosen architecture
    noise_var: float
    n_images: int
    image_seed: int


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint chosen to reconstruct the shown images at the current noise variance."""

    plain: EntrySummary
    denoiser: EntrySummary | None  # None at variance 0
    model_entry: EntrySummary | None  # the entry whose model reconstructs; None when nothing is cached
    fallback: bool  # True when the plain autoencoder replaces a missing denoiser


# ---------------------------------------------------------------------------------------------
# Session state, initialised once per session


# ---------------------------------------------------------------------------------------------
# The address's query parameters, checked before the widgets read them


def _is_int_in(text: str, low: int, high: int) -> bool:
    try:
        return low <= int(text) <= high
    except ValueError:
        return False


def _is_float_in(text: str, low: float, high: float) -> bool:
    try:
        return low <= float(text) <= high  # False for nan
    except ValueError:
        return False


# key -> (accepted values in words, test of one value). The selectboxes and radios keep their shown
# label in the address; their command-line names are accepted too (URL_ALIASES, name -> label).
URL_CHECKS = {
    "dataset": (", ".join(DISPLAY_NAMES[name] for name in DATASETS), lambda v: v in DISPLAY_NAMES.values()),
    "depth": (" or ".join(map(str, DEPTHS)), lambda v: v in {str(depth) for depth in DEPTHS}),
    "latent_dim": (", ".join(map(str, LATENT_GRID)), lambda v: v in {str(size) for size in LATENT_GRID}),
    "regularizer": (", ".join(REGULARIZER_NAMES[r] for r in REGULARIZERS),
                    lambda v: v in {REGULARIZER_NAMES[r] for r in REGULARIZERS}),
    "noise_var": ("a number from 0 to 1", lambda v: _is_float_in(v, 0.0, 1.0)),
    "n_images": ("a whole number from 4 to 16", lambda v: _is_int_in(v, 4, 16)),
    "epochs": ("a whole number from 1 to 200", lambda v: _is_int_in(v, 1, 200)),
    "train_seed": (f"a whole number from 0 to {2**31 - 1}", lambda v: _is_int_in(v, 0, 2**31 - 1)),
}
URL_ALIASES = {
    "dataset": {name: DISPLAY_NAMES[name] for name in DATASETS},
    "regularizer": {name: REGULARIZER_NAMES[name] for name in REGULARIZERS},
}


def check_query_params() -> list[str]:
    """Apply command-line names found in the address, and return one sentence per invalid value.

    Runs before the widgets. Streamlit drops a bound value that its widget does not offer, and the
    returned sentences tell the user which values were dropped. Streamlit rejects changes to a
    bound parameter through st.query_params, so a command-line name goes into the widget's
    session state instead, on the session's first run.
    """
    params = st.query_params
    notes = []
    for key, (accepted, is_valid) in URL_CHECKS.items():
        if key not in params:
            continue
        value = params[key]
        name = value.strip().lower()
        if name in URL_ALIASES.get(key, {}):
            if key not in st.session_state:
                st.session_state[key] = name
        elif not is_valid(value):
            notes.append(f"`{key}={value[:40]}` is not a value of this control ({accepted})")
    return notes


def init_session_state() -> None:
    """Create this session's own keys once; widgets keep their values under their keys."""
    st.session_state.setdefault("image_seed", 0)
    st.session_state.setdefault("job_ids", [])  # jobs this session shows: its own and every running one
    st.session_state.setdefault("own_jobs", [])  # jobs started or joined here; they show their live curve
    st.session_state.setdefault("announced_jobs", [])  # finished jobs the page already reran for


# ---------------------------------------------------------------------------------------------
# Cached helpers: data, models, summaries and the job manager, one copy per process


@st.cache_resource(show_spinner=False)
def configure_logging() -> bool:
    """Send the engine's and the page's log lines (job starts, ends, errors) to stderr, once per process.

    Does nothing when the root logger already has handlers, as under pytest, so that logging
    set up by the host is left alone. Returns whether a handler was added.
    """
    if logging.getLogger().handlers:
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ae_core", logger.name):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return True


@st.cache_resource(show_spinner=False)
def configure_torch() -> int:
    """Run torch on one intra-op thread in this process; return the previous thread count.

    The page's own work is a forward pass of a few images, and its models are small, so extra
    intra-op threads mostly add hand-off overhead; the engine's sweep uses one thread per worker
    for the same reason. Measured with AppTest on a shared, busy 2-core CPU (torch 2.14): the
    median server time of a slider rerun fell from about 120 ms with two threads to 55-70 ms.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


@st.cache_resource(show_spinner="Loading the images…")
def load_data(dataset: str, data_dir: str) -> DatasetSplits:
    """Load one dataset once per process; callers only read the tensors."""
    return load_dataset(dataset, data_dir)


@st.cache_resource(show_spinner=False)
def eval_noise() -> torch.Tensor:
    """Draw the fixed N(0, 1) evaluation noise once per process: test image i always gets row i."""
    return eval_standard_normal((TEST_SIZE, 28 * 28))


# The checkpoint stamp (path, mtime, size, inode) is the cache key: the path names every config
# field, and hashing the short tuple is far cheaper than hashing the config on every rerun.
@st.cache_resource(max_entries=32, show_spinner=False)
def load_model(stamp: tuple, _config: ModelConfig) -> Autoencoder:
    """Load one checkpoint version's model in eval mode with gradients off; every session shares it read-only."""
    return load_checkpoint(Path(stamp[0]), expected=_config).model.eval().requires_grad_(False)


@st.cache_data(max_entries=2048, show_spinner=False)
def read_entry(stamp: tuple, _config: ModelConfig) -> EntrySummary:
    """Read the status, metrics and history of one checkpoint version, without keeping its weights."""
    config = _config
    try:
        trained = load_checkpoint(Path(stamp[0]), expected=config)
    except FileNotFoundError:
        return EntrySummary(config, "missing")
    except CheckpointError as error:
        logger.warning("checkpoint %s cannot be used: %s", stamp[0], error.reason)  # once per file version
        return EntrySummary(config, "damaged", error=error.reason, stamp=stamp)
    return EntrySummary(config, "cached", dict(trained.metrics), tuple(trained.history), trained.created,
                        stamp=stamp)


# Building a plotly figure validates every property, which took about 6 ms here. A checkpoint's
# curve never changes, so its figure is built once per process; st.plotly_chart copies it.
@st.cache_resource(max_entries=256, show_spinner=False)
def loss_figure(title: str, versions: tuple, _histories: dict) -> go.Figure:
    """Return the loss-curve figure of checkpoint versions ((name, stamp), ...) with those histories."""
    return figures.loss_curve_figure(_histories, title)


@st.cache_resource(show_spinner=False)
def job_manager(checkpoint_dir: str) -> JobManager:
    """Return the process-wide job manager of one checkpoint folder."""
    return JobManager(CheckpointStore(checkpoint_dir), device=str(pick_device("auto")))


@st.cache_resource(show_spinner=False)
def score_cache() -> explore.ScoreCache:
    """Return the process-wide cache of whole-test-set scores."""
    return explore.ScoreCache()


def entry_for(store: CheckpointStore, config: ModelConfig, training: set) -> EntrySummary:
    """Return a configuration's summary; a missing one that a job is training reads "training"."""
    stamp = explore.checkpoint_stamp(store.path(config))
    if stamp is None:
        return EntrySummary(config, "training" if config in training else "missing")
    entry = read_entry(stamp, config)
    if entry.status == "missing" and config in training:
        return EntrySummary(config, "training")
    return entry


def shown_model(entry: EntrySummary | None) -> Autoencoder | None:
    """Return the shared model of a cached entry, or None."""
    if entry is None or entry.status != "cached":
        return None
    return load_model(entry.stamp, entry.config)


# ---------------------------------------------------------------------------------------------
# Sidebar


def next_image_seed() -> None:
    """Draw a new set of test images (button callback)."""
    st.session_state["image_seed"] += 1


def strength_label(regularizer: str) -> str:
    """Name a regularizer with its default strength, as in chart legends: "Lasso 1e-05"."""
    if regularizer == "none":
        return "none"
    return f"{REGULARIZER_NAMES[regularizer]} {default_strength(regularizer):g}"


def strength_text(regularizer: str) -> str:
    """Describe the regularizer's default strength for the sidebar."""
    if regularizer == "none":
        return "No regularization."
    return f"{REGULARIZER_NAMES[regularizer]} {STRENGTH_NAMES[regularizer]} = {default_strength(regularizer):g}"


def sidebar_ui() -> Selection:
    """Draw the model, noise and image controls; return the selection."""
    sidebar = st.sidebar
    sidebar.header("Model")
    dataset = sidebar.selectbox("Dataset", DATASETS, format_func=DISPLAY_NAMES.get, key="dataset", bind=BIND)
    depth = sidebar.radio("Encoder depth (Linear layers)", DEPTHS, horizontal=True, key="depth", bind=BIND)
    latent_dim = sidebar.select_slider("Latent size", LATENT_GRID, value=100, key="latent_dim", bind=BIND)
    regularizer = sidebar.radio("Regularizer", REGULARIZERS, format_func=REGULARIZER_NAMES.get, horizontal=True,
                                key="regularizer", bind=BIND)
    sidebar.caption(strength_text(regularizer))

    sidebar.header("Noise")
    noise_var = sidebar.slider("Noise variance σ²", 0.0, 1.0, 0.0, explore.SLIDER_STEP, key="noise_var", bind=BIND,
                               help="Variance of the Gaussian noise added to each pixel before clipping to [0, 1].")
    noise_var = round(float(noise_var), 2)
    if noise_var == 0:
        sidebar.caption("σ² = 0: no noise, the page shows plain reconstruction.")
    else:
        sidebar.caption(f"Standard deviation σ = {math.sqrt(noise_var):.3f}")

    sidebar.header("Test images")
    n_images = sidebar.slider("Images shown", 4, 16, 8, key="n_images", bind=BIND)
    sidebar.button("Draw new test images", key="draw_images", on_click=next_image_seed, icon=":material/casino:")
    image_seed = st.session_state["image_seed"]
    sidebar.caption(f"Test images drawn with seed {image_seed}.")

    with sidebar.expander("Advanced"):
        epochs = st.number_input("Training epochs", 1, 200, DEFAULT_EPOCHS, key="epochs", bind=BIND,
                                 help="Epochs of a newly trained model; 1 trains in seconds.")
        seed = st.number_input("Training seed", 0, 2**31 - 1, DEFAULT_SEED, key="train_seed", bind=BIND,
                               help="Seed of the initial weights, the batch order and the training noise.")

    config = ModelConfig.make(regularizer=regularizer, dataset=dataset, depth=int(depth), latent_dim=int(latent_dim),
                              epochs=int(epochs), seed=int(seed))
    return Selection(config, noise_var, int(n_images), int(image_seed))


def training_ui(selection: Selection, manager: JobManager, data: DatasetSplits | None) -> None:
    """Draw the sidebar's training buttons and start the jobs they ask for."""
    sidebar = st.sidebar
    sidebar.header("Training")
    disabled = data is None
    if sidebar.button("Retrain selected model", key="retrain", icon=":material/refresh:", disabled=disabled,
                      help="Train the selected plain autoencoder again from its seed; the checkpoint is "
                           "replaced when the run finishes."):
        start_training(manager, selection.config, {data.name: data}, retrain=True)
    if sidebar.button("Train all missing grid models", key="train_missing", icon=":material/playlist_play:",
                      disabled=disabled,
                      help="32 plain models (2 datasets × 2 depths × 4 latent sizes × Lasso and Dropout), then "
                           "each dataset's best plain model as a denoiser at each noise variance, one after the "
                           "other. Cached models are skipped."):
        datasets = {}
        try:
            for name in DATASETS:
                datasets[name] = load_data(name, str(default_data_dir()))
        except DataError as error:
            sidebar.error(f"Cannot train every dataset: {error}")
            return
        plain = explore.plain_grid(selection.config.epochs, selection.config.seed)
        view = manager.train_missing(plain, datasets.__getitem__)
        remember_job(view)
    sidebar.caption(f"New models train for {epoch_text(selection.config.epochs)} with seed "
                    f"{selection.config.seed} (see Advanced).")


def start_training(manager: JobManager, config: ModelConfig, datasets: dict, retrain: bool) -> None:
    """Start or join the job that trains config, and follow it in this session."""
    joined = config in manager.running_configs()
    view = manager.train(config, datasets.__getitem__, retrain=retrain)
    remember_job(view)
    if joined:
        st.toast(f"{config.label} is already training in job {view.id}; this page follows that job.")


def remember_job(view: JobView, own: bool = True) -> None:
    """Add a job to the ones this session shows until dismissed; own marks one started or joined here."""
    if view.id not in st.session_state["job_ids"]:
        st.session_state["job_ids"].append(view.id)
    if own and view.id not in st.session_state["own_jobs"]:
        st.session_state["own_jobs"].append(view.id)


# ---------------------------------------------------------------------------------------------
# Background jobs: a fragment that refreshes itself while a job runs


def visible_jobs(views: list[JobView]) -> list[JobView]:
    """Return every running job, and the finished ones started or joined here and not dismissed, newest first."""
    own, shown = set(st.session_state["own_jobs"]), set(st.session_state["job_ids"])
    return [view for view in reversed(views) if view.running or (view.id in own and view.id in shown)]


def job_card_ui(manager: JobManager, view: JobView) -> None:
    """Draw one job: progress, live loss curve, cancel or dismiss, and its errors.

    The live curve is on by default only in the sessions that started or joined the job. Every
    session refreshes its cards while a job runs, so a chart in every session would cost a
    classroom's server more than the training step does.
    """
    with st.container(border=True):
        state_text = {"running": "running", "done": "finished", "failed": "finished with errors",
                      "cancelled": "cancelled"}[view.state]
        st.markdown(f"**{view.title}** · job {view.id}, {state_text}")
        st.progress(view.fraction, text=view.detail)
        show_curve = view.running and st.toggle("Live loss curve", value=view.id in st.session_state["own_jobs"],
                                                key=f"live_curve_{view.id}")
        if show_curve and (view.step_points or view.history) and view.current is not None:
            figure = figures.loss_curve_figure({view.current.label: view.history}, f"Live loss: {view.current.label}",
                                               view.step_points, height=LIVE_CHART_HEIGHT)
            st.plotly_chart(figure, key=f"live_chart_{view.id}")
        for error in view.errors:
            st.error(f"Training failed: {error}")
        if view.state == "done":
            trained = sum(1 for _, how in view.results if how == "trained")
            st.success(f"Finished in {(view.finished or time.time()) - view.started:.0f} s: {trained} model(s) "
                       f"trained, {len(view.results) - trained} already cached. The page now uses the new "
                       "checkpoints.")
        if view.state == "cancelled":
            kept = f" The {len(view.results)} model(s) finished earlier in this job are kept." if view.results else ""
            st.warning(f"Cancelled. The interrupted model was not saved.{kept}")
        if view.running and view.id in st.session_state["own_jobs"]:
            if st.button("Cancel", key=f"cancel_{view.id}", icon=":material/stop_circle:"):
                manager.cancel(view.id)
        elif view.running:
            st.caption("Started from another page. Only a page that started or joined a job can cancel it; "
                       "training the same model here joins it.")
        elif st.button("Dismiss", key=f"dismiss_{view.id}"):
            st.session_state["job_ids"].remove(view.id)
            st.rerun()


def live_jobs_ui(checkpoint_dir: str) -> None:
    """Draw the jobs and rerun the whole page once each job that this session followed ends.

    Every session follows every running job, so all pages pick up a new checkpoint, but only the
    pages that started or joined a job keep its card after it ends.
    """
    manager = job_manager(checkpoint_dir)
    views = manager.jobs()
    for view in views:
        if view.running:
            remember_job(view, own=False)  # this session follows every running job, so it reruns when one ends
    for view in visible_jobs(views):
        job_card_ui(manager, view)
    announced = st.session_state["announced_jobs"]
    followed = set(st.session_state["job_ids"])
    newly_finished = [view.id for view in views
                      if view.id in followed and not view.running and view.id not in announced]
    if newly_finished:
        announced.extend(newly_finished)
        st.rerun()


def jobs_ui(checkpoint_dir: str, manager: JobManager) -> None:
    """Draw the job panel; it refreshes itself while a job runs.

    A session refreshes every LIVE_REFRESH_S seconds while a job it started or joined runs, and
    every WATCH_REFRESH_S seconds while only other sessions' jobs run.
    """
    running = [view.id for view in manager.jobs() if view.running]
    if not running:
        interval = None
    elif set(running) & set(st.session_state["own_jobs"]):
        interval = LIVE_REFRESH_S
    else:
        interval = WATCH_REFRESH_S
    st.fragment(live_jobs_ui, run_every=interval)(checkpoint_dir)


# ---------------------------------------------------------------------------------------------
# Model status and the images


def pick_shown(plain: EntrySummary, denoiser: EntrySummary | None) -> ModelChoice:
    """Use the denoiser when cached, else the plain autoencoder as a labelled stand-in."""
    if denoiser is None:
        return ModelChoice(plain, None, plain if plain.status == "cached" else None, False)
    if denoiser.status == "cached":
        return ModelChoice(plain, denoiser, denoiser, False)
    if plain.status == "cached":
        return ModelChoice(plain, denoiser, plain, True)
    return ModelChoice(plain, denoiser, None, False)


def choose_models(store: CheckpointStore, selection: Selection, training: set) -> ModelChoice:
    """Pick the checkpoint that reconstructs at the selected noise variance."""
    plain = entry_for(store, selection.config, training)
    denoiser_config = explore.denoiser_for(selection.config, selection.noise_var)
    denoiser = entry_for(store, denoiser_config, training) if denoiser_config is not None else None
    return pick_shown(plain, denoiser)


def epoch_text(epochs: int) -> str:
    """Format an epoch count with the right plural."""
    return "1 epoch" if epochs == 1 else f"{epochs} epochs"


def describe(config: ModelConfig) -> str:
    """Name a configuration with its epochs and seed."""
    return f"{config.label} ({epoch_text(config.epochs)}, seed {config.seed})"


def model_status_ui(choice: ModelChoice, selection: Selection, manager: JobManager, data: DatasetSplits) -> None:
    """Say what is cached, what is missing or damaged, and offer the button that trains it."""
    plain = choice.plain
    datasets = {data.name: data}
    if plain.status == "damaged":
        st.error(f"The checkpoint of {describe(plain.config)} cannot be used: {plain.error}. Retrain it to "
                 "replace the file.")
        if st.button("Retrain this model", key="retrain_damaged", icon=":material/build:"):
            start_training(manager, plain.config, datasets, retrain=True)
            st.rerun()
    elif plain.status in ("missing", "training"):
        if plain.status == "training":
            st.info(f"{describe(plain.config)} is being trained; its reconstructions appear when it finishes.")
        else:
            st.warning(f"{describe(plain.config)} is not trained yet, so there is no reconstruction to show.")
            if st.button("Train this model", key="train_selected", type="primary", icon=":material/model_training:"):
                start_training(manager, plain.config, datasets, retrain=False)
                st.rerun()

    denoiser = choice.denoiser
    if denoiser is None:
        return
    note = explore.describe_denoiser(selection.noise_var)
    if denoiser.status == "cached":
        st.caption(f"Reconstruction by the {note}.")
        return
    reason = {"missing": "is not trained yet", "training": "is being trained",
              "damaged": f"has a damaged checkpoint ({denoiser.error})"}[denoiser.status]
    fallback = " The row below shows the plain autoencoder's reconstruction of the noisy input instead." \
        if choice.fallback else ""
    st.info(f"The {note} {reason}.{fallback}")
    if denoiser.status != "training":
        verb = "Retrain" if denoiser.status == "damaged" else "Train"
        if st.button(f"{verb} the denoiser at variance {denoiser.config.noise_var:g}", key="train_denoiser",
                     icon=":material/model_training:"):
            start_training(manager, denoiser.config, datasets, retrain=denoiser.status == "damaged")
            st.rerun()


def whole_test_scores(choice: ModelChoice, data: DatasetSplits, noise_var: float) -> dict:
    """Return the whole-test-set scores at noise_var: computed once per checkpoint version and variance."""
    cache = score_cache()
    noise = eval_noise()
    if choice.model_entry is None:
        return dict(cache.get_or_compute(("noisy", data.name, noise_var),
                                         lambda: explore.noisy_input_scores(data.test_x, noise, noise_var)))
    model = shown_model(choice.model_entry)
    return dict(cache.get_or_compute((choice.model_entry.stamp, noise_var),
                                     lambda: explore.score_test_set(model, data.test_x, noise, noise_var)))


def prefetch_scores(store: CheckpointStore, selection: Selection, data: DatasetSplits, training: set) -> None:
    """Ask the background thread to score the other slider values, nearest ones first."""
    plain = entry_for(store, selection.config, training)
    denoisers = {var: entry_for(store, selection.config.with_(noise_var=float(var)), training) for var in NOISE_VARS}
    noise = eval_noise()
    cache = score_cache()
    tasks = []
    for noise_var in sorted(explore.SLIDER_VARS, key=lambda v: abs(v - selection.noise_var)):
        trained_var = explore.nearest_trained_var(noise_var)
        model_entry = pick_shown(plain, denoisers[trained_var] if trained_var is not None else None).model_entry
        key = (model_entry.stamp, noise_var) if model_entry is not None else None
        if key is None or cache.get(key) is not None:
            continue  # most reruns end here: the scores of a shown model are computed once
        model = shown_model(model_entry)
        tasks.append((key, lambda m=model, v=noise_var: explore.score_test_set(m, data.test_x, noise, v)))
    if tasks:
        cache.prefetch(tasks)


def image_rows_ui(images: explore.ShownImages, data: DatasetSplits, choice: ModelChoice, noise_var: float) -> None:
    """Draw originals, noisy inputs and reconstructions, each image captioned."""
    names = CLASS_NAMES[data.name]
    labels = data.test_y[images.indices].tolist()
    st.markdown("**Original test images**")
    captions = [f"#{index} · {names[label]}" for index, label in zip(images.indices, labels)]
    st.image(explore.png_data_urls(images.x), caption=captions, width=IMAGE_WIDTH)

    if noise_var == 0:
        st.markdown("**Noisy input**: variance 0, no noise added (identical to the originals)")
        noisy_captions = ["no noise"] * len(images.indices)
    else:
        st.markdown(f"**Noisy input**: variance {noise_var:g} (σ = {math.sqrt(noise_var):.3f}), PSNR per image")
        noisy_captions = [explore.psnr_caption(value) for value in images.noisy_psnr]
    st.image(explore.png_data_urls(images.x_noisy), caption=noisy_captions, width=IMAGE_WIDTH)

    if images.x_hat is None:
        st.markdown("**Reconstruction**: no trained model yet")
        return
    if choice.fallback:
        title = ("**Plain autoencoder's reconstruction of the noisy input** (no denoiser for this variance yet), "
                 "PSNR per image")
    elif choice.denoiser is not None:
        title = f"**Denoised** by the {explore.describe_denoiser(noise_var)}, PSNR per image"
    else:
        title = "**Reconstruction** by the plain autoencoder, PSNR per image"
    st.markdown(title)
    st.image(explore.png_data_urls(images.x_hat), caption=[explore.psnr_caption(v) for v in images.psnr],
             width=IMAGE_WIDTH)


def metrics_ui(images: explore.ShownImages, scores: dict, choice: ModelChoice, noise_var: float) -> None:
    """Draw the mean PSNR of the shown images and of the whole test set, output and noisy input."""
    if choice.fallback:
        output_name = "Plain autoencoder"
    elif choice.denoiser is not None:
        output_name = "Denoised"
    else:
        output_name = "Reconstruction"
    if images.psnr is None and noise_var == 0:
        return
    st.markdown("**Mean PSNR**")
    columns = st.columns(4)
    noisy_mean = float(images.noisy_psnr.mean())
    if images.psnr is not None:
        output_mean = float(images.psnr.mean())
        delta = f"{output_mean - noisy_mean:+.2f} dB over the noisy input" if noise_var > 0 else None
        columns[0].metric(f"{output_name} · shown images", f"{output_mean:.2f} dB", delta, help=PSNR_HELP)
        columns[1].metric(f"{output_name} · test set", f"{scores['test_psnr']:.2f} dB",
                          help=f"All {TEST_SIZE:,} test images. {PSNR_HELP}")
    if noise_var > 0:
        columns[2].metric("Noisy input · shown images", f"{noisy_mean:.2f} dB", help=PSNR_HELP)
        columns[3].metric("Noisy input · test set", f"{scores['noisy_psnr']:.2f} dB",
                          help=f"All {TEST_SIZE:,} test images. {PSNR_HELP}")
    else:
        columns[2].caption("Variance 0: the input is the clean image, so no noisy-input PSNR is shown.")
    st.caption(f"{PSNR_HELP} The test set is all {TEST_SIZE:,} test images, with the same fixed noise for "
               "every model.")


def model_view_ui(store: CheckpointStore, selection: Selection, manager: JobManager, data: DatasetSplits,
                  training: set) -> ModelChoice:
    """Draw the status messages, metrics and image rows of the selection; return the model choice."""
    choice = choose_models(store, selection, training)
    st.subheader(describe(selection.config))
    model_status_ui(choice, selection, manager, data)

    model = shown_model(choice.model_entry)
    indices = explore.pick_test_indices(len(data.test_x), selection.n_images, selection.image_seed)
    images = explore.reconstruct_shown(model, data.test_x, eval_noise(), indices, selection.noise_var)
    scores = whole_test_scores(choice, data, selection.noise_var)
    metrics_ui(images, scores, choice, selection.noise_var)
    image_rows_ui(images, data, choice, selection.noise_var)
    return choice


# ---------------------------------------------------------------------------------------------
# Charts


def loss_tab_ui(choice: ModelChoice) -> None:
    """Draw the loss curves of the selected model and of the denoiser in use, in one chart."""
    entries = [choice.plain] + ([choice.denoiser] if choice.denoiser is not None else [])
    cached = [entry for entry in entries if entry.status == "cached"]
    for entry in entries:
        if entry.status != "cached":
            st.info(f"No loss curve for {describe(entry.config)}: it is {entry.status}.")
    if not cached:
        return

    # one chart for both models: every extra chart costs several milliseconds per rerun
    names = {entry.config: "plain" if not entry.config.is_denoiser else f"denoiser {entry.config.noise_var:g}"
             for entry in cached}
    title = f"Loss per epoch: {cached[0].config.label}"
    if len(cached) > 1:
        title += f" (solid), denoiser at variance {cached[1].config.noise_var:g} (dashed)"
    elif cached[0].config.is_denoiser:
        title = f"Loss per epoch: denoiser {cached[0].config.label}"
    histories = {names[entry.config]: entry.history for entry in cached}
    versions = tuple((names[entry.config], entry.stamp) for entry in cached)
    st.plotly_chart(loss_figure(title, versions, histories), key="loss_chart")
    for entry in cached:
        seconds = entry.metrics.get("seconds") or 0.0
        st.caption(f"{names[entry.config].capitalize()} model: checkpoint written "
                   f"{entry.created or 'at an unknown time'}, trained in {seconds:.0f} s.")
    st.caption("Loss is the mean squared error per pixel against the clean images.")


def regularizer_tab_ui(store: CheckpointStore, config: ModelConfig, training: set) -> None:
    """Compare the test loss curves of the regularizers of the selected architecture."""
    curves, missing = {}, []
    for regularizer in REGULARIZERS:
        entry = entry_for(store, ModelConfig.make(regularizer=regularizer, **_architecture(config)), training)
        name = strength_label(regularizer)
        if entry.status == "cached":
            curves[name] = entry.history
        elif regularizer != "none":
            missing.append(f"{name} ({entry.status})")
    if curves:
        title = f"Test loss per epoch, {config.dataset}, depth {config.depth}, latent {config.latent_dim}"
        st.plotly_chart(figures.regularizer_figure(curves, title), key="regularizer_chart")
    if missing:
        st.info(f"Not cached for this architecture: {', '.join(missing)}. Select it in the sidebar to train it.")


def _architecture(config: ModelConfig) -> dict:
    """Return the config fields that the regularizer comparison keeps fixed."""
    return dict(dataset=config.dataset, depth=config.depth, latent_dim=config.latent_dim, epochs=config.epochs,
                seed=config.seed)


def psnr_tab_ui(store: CheckpointStore, config: ModelConfig, training: set) -> None:
    """Plot denoised and noisy-input PSNR against noise variance from the cached denoisers."""
    architectures = explore.plain_grid(config.epochs, config.seed)
    if config not in architectures:
        architectures.append(config)
    denoised, noisy = {}, {}
    for base in architectures:
        if base.dataset != config.dataset:
            continue
        points = []
        for noise_var in NOISE_VARS:
            entry = entry_for(store, base.with_(noise_var=float(noise_var)), training)
            if entry.status == "cached":
                points.append((noise_var, entry.metrics["test_psnr"]))
                noisy[noise_var] = entry.metrics.get("noisy_psnr")
        if points:
            denoised[f"depth {base.depth}, latent {base.latent_dim}, {REGULARIZER_NAMES[base.regularizer]}"] = points
    if not denoised:
        st.info(f"No denoiser of {DISPLAY_NAMES[config.dataset]} is cached for {epoch_text(config.epochs)} and seed "
                f"{config.seed}. 'Train all missing grid models' trains the dataset's best plain model at each "
                f"variance ({', '.join(f'{v:g}' for v in NOISE_VARS)}).")
        return
    noisy_points = [(v, p) for v, p in noisy.items() if p is not None]
    title = f"PSNR against noise variance, {DISPLAY_NAMES[config.dataset]} test set"
    st.plotly_chart(figures.psnr_noise_figure(denoised, noisy_points, title), key="psnr_chart")
    st.caption(f"{figures.PSNR_NOTE}. Each point is a denoiser trained and evaluated at that variance.")


def overview_summaries(store: CheckpointStore, epochs: int, seed: int, training: set) -> list[EntrySummary]:
    """Return the 32 plain grid entries, then the sweep's denoisers of each dataset that has a best model."""
    plain = [entry_for(store, config, training) for config in explore.plain_grid(epochs, seed)]
    losses = [(entry.config, entry.metrics["test_loss"]) for entry in plain if entry.status == "cached"]
    denoisers = []
    for dataset in DATASETS:
        best = explore.best_plain(losses, dataset)
        if best is not None:
            denoisers += [entry_for(store, config, training) for config in explore.sweep_denoisers(best)]
    return plain + denoisers


TABLE_COLUMNS = {
    "latent_dim": st.column_config.NumberColumn("latent size"),
    "noise_var": st.column_config.NumberColumn("noise variance", format="%.2f"),
    "test_loss": st.column_config.NumberColumn("test loss (MSE)", format="%.5f"),
    "test_psnr": st.column_config.NumberColumn("test PSNR (dB)", format="%.2f"),
    "noisy_psnr": st.column_config.NumberColumn("noisy input PSNR (dB)", format="%.2f"),
}


def overview_tab_ui(store: CheckpointStore, config: ModelConfig, training: set) -> None:
    """Show every grid configuration: heatmap, best models and the full table."""
    summaries = overview_summaries(store, config.epochs, config.seed, training)
    rows = explore.overview_rows(summaries)
    cached = sum(1 for row in rows if row["status"] == "cached")
    plain_cached = sum(1 for row in rows if row["status"] == "cached" and not row["noise_var"])
    pending = len(DATASETS) * len(NOISE_VARS) - (len(rows) - 32)
    st.markdown(f"**{plain_cached} of 32** plain grid models and **{cached - plain_cached} of "
                f"{len(DATASETS) * len(NOISE_VARS)}** denoisers are cached ({epoch_text(config.epochs)}, seed "
                f"{config.seed}).")
    if pending:
        st.caption(f"{pending} denoisers are chosen once their dataset has a cached plain model: the sweep trains "
                   "each dataset's lowest-test-loss plain model at every noise variance.")
    st.plotly_chart(figures.overview_figure(rows), key="overview_chart")

    best = explore.best_rows(rows)
    if best:
        st.markdown("**Best plain model per dataset and regularizer** (lowest test loss)")
        st.dataframe(pd.DataFrame(best)[["dataset", "regularizer", "depth", "latent_dim", "test_loss", "test_psnr"]],
                     hide_index=True, column_config=TABLE_COLUMNS)
    st.markdown("**Every grid configuration**")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, column_config=TABLE_COLUMNS)


def charts_ui(store: CheckpointStore, selection: Selection, choice: ModelChoice, training: set) -> None:
    """Draw the chart tabs; only the open tab is computed."""
    tabs = st.tabs(["Loss curves", "Lasso vs Dropout", "PSNR vs noise", "All configurations"], key="chart_tab",
                   on_change="rerun", bind=BIND)
    drawers = [
        lambda: loss_tab_ui(choice),
        lambda: regularizer_tab_ui(store, selection.config, training),
        lambda: psnr_tab_ui(store, selection.config, training),
        lambda: overview_tab_ui(store, selection.config, training),
    ]
    for tab, draw in zip(tabs, drawers):
        if tab.open is False:
            continue
        with tab:
            draw()


# ---------------------------------------------------------------------------------------------
# Page


def data_error_ui(dataset: str, error: DataError) -> None:
    """Explain missing or damaged data and name the command that prepares it."""
    st.error(f"The {DISPLAY_NAMES[dataset]} images are missing or damaged, so nothing can be shown or trained "
             f"yet.\n\n{error}\n\nTo prepare both datasets, run `make data` in the project folder (or "
             f"`{python_command()} -m ae_core data`), "
             "then reload this page.")


def main() -> None:
    """Draw the page: sidebar, job panel, images and metrics, then the chart tabs."""
    configure_logging()
    configure_torch()
    init_session_state()
    url_notes = check_query_params()
    selection = sidebar_ui()
    store = CheckpointStore()
    checkpoint_dir = str(store.root.resolve())
    manager = job_manager(checkpoint_dir)

    st.html(PIXELATED_CSS)
    st.title("Autoencoder lab")
    if url_notes:
        st.warning("The address holds values that the page's controls do not offer, so those controls show "
                   f"their default or a rounded value instead: {'; '.join(url_notes)}.")
    st.caption("Compress test images through a small latent code and rebuild them; add Gaussian noise and see how "
               "a denoising autoencoder removes it. Models train on the 60,000 training images; all scores are "
               "on the 10,000 test images.")

    data = None
    try:
        data = load_data(selection.config.dataset, str(default_data_dir()))
    except DataError as error:
        data_error_ui(selection.config.dataset, error)
    training_ui(selection, manager, data)
    jobs_ui(checkpoint_dir, manager)
    if data is None:
        return

    training = manager.running_configs()
    choice = model_view_ui(store, selection, manager, data, training)
    st.divider()
    charts_ui(store, selection, choice, training)
    prefetch_scores(store, selection, data, training)

