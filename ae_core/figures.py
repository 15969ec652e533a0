"""Plotly figures of the dashboard: each function takes plain data and returns a new figure."""

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from .config import DATASETS, LATENT_GRID

PSNR_NOTE = "PSNR in dB, data range 1, mean of per-image PSNR over the 10,000 test images"

# Figures are built from one dict in a single constructor call, because the dashboard builds one
# on every rerun. Adding traces and updating the layout step by step took 30-130 ms for a small
# line chart on a shared 2-core CPU, one dict 2-7 ms (plotly 7.1).


def _layout(title: str, x_title: str, y_title: str, **extra) -> dict:
    layout = dict(title=dict(text=title), xaxis=dict(title=dict(text=x_title)),
                  yaxis=dict(title=dict(text=y_title)), margin=dict(l=10, r=10, t=50, b=10), height=360,
                  legend=dict(orientation="h", y=-0.2), hovermode="x unified")
    layout.update(extra)
    return layout


def _line(x: Sequence, y: Sequence, name: str, **style) -> dict:
    return dict(type="scatter", x=list(x), y=list(y), mode="lines+markers", name=name, **style)


# Line colours of train and test loss; a second model's lines are dashed.
TRAIN_COLOR = "#1f77b4"
TEST_COLOR = "#ff7f0e"


def loss_curve_figure(histories: Mapping[str, Sequence[Mapping]], title: str, step_points: Sequence[tuple] = (),
                      height: int = 360) -> go.Figure:
    """Plot training and test loss per epoch of one or more models, and optionally the running loss.

    histories maps a model's name to its per-epoch records. With one model the lines are named
    "train loss" and "test loss", with more they get the model's name in front. step_points are
    (epoch as a float, running mean training loss of that epoch so far), as a training job
    reports them. They let a live chart move before the first epoch ends.
    """
    traces = []
    if step_points:
        traces.append(dict(type="scatter", x=[p[0] for p in step_points], y=[p[1] for p in step_points],
                           mode="lines", name="training loss, running mean of the epoch",
                           line=dict(color="#9ecae1", width=1)))
    longest = 0
    for index, (name, history) in enumerate(histories.items()):
        prefix = f"{name}: " if len(histories) > 1 else ""
        dash = "dash" if index else "solid"
        epochs = [record["epoch"] for record in history]
        longest = max(longest, len(epochs))
        traces.append(_line(epochs, [record["train_loss"] for record in history], f"{prefix}train loss",
                            line=dict(color=TRAIN_COLOR, dash=dash)))
        traces.append(_line(epochs, [record["test_loss"] for record in history], f"{prefix}test loss",
                            line=dict(color=TEST_COLOR, dash=dash)))
    layout = _layout(title, "epoch", "MSE per pixel", height=height)
    if step_points:
        layout["xaxis"]["rangemode"] = "tozero"
    elif longest <= 20:
        layout["xaxis"]["dtick"] = 1
    return go.Figure(dict(data=traces, layout=layout))


def regularizer_figure(curves: Mapping[str, Sequence[Mapping]], title: str) -> go.Figure:
    """Plot the test loss per epoch of several regularizers of one architecture, one line each."""
    traces = [_line([r["epoch"] for r in history], [r["test_loss"] for r in history], name)
              for name, history in curves.items()]
    return go.Figure(dict(data=traces, layout=_layout(title, "epoch", "test MSE per pixel")))


def psnr_noise_figure(denoised: Mapping[str, Sequence[tuple]], noisy: Sequence[tuple], title: str) -> go.Figure:
    """Plot PSNR against noise variance: one line per denoiser architecture, plus the noisy input.

    denoised maps an architecture's name to (noise_var, test_psnr) pairs. noisy contains the
    (noise_var, noisy_psnr) pairs of the input itself.
    """
    traces = []
    for name, points in denoised.items():
        points = sorted(points)
        traces.append(_line([p[0] for p in points], [p[1] for p in points], f"denoised: {name}"))
    noisy = sorted(noisy)
    traces.append(_line([p[0] for p in noisy], [p[1] for p in noisy], "noisy input",
                        line=dict(color="gray", dash="dash")))
    layout = _layout(title, "noise variance", "PSNR (dB)")
    layout["xaxis"]["range"] = [0, 1.05]
    return go.Figure(dict(data=traces, layout=layout))


def overview_figure(rows: Sequence[Mapping], datasets: Sequence[str] = DATASETS,
                    latents: Sequence[int] = LATENT_GRID) -> go.Figure:
    """Draw one heatmap of test loss per dataset: rows are depth and regularizer, columns latent size.

    Each cell is labelled with its test loss, or with its status when it has no metrics
    (missing, damaged, training). A star marks the lowest test loss of each dataset and
    regularizer. Only plain configurations (noise_var 0) are drawn.
    """
    plain = [row for row in rows if not row["noise_var"]]
    row_keys = sorted({(row["depth"], row["regularizer"]) for row in plain})
    row_names = [f"depth {depth}, {regularizer}" for depth, regularizer in row_keys]
    columns = [str(latent) for latent in latents]
    losses = [row["test_loss"] for row in plain if row["test_loss"] is not None]
    best = {}
    for row in plain:
        key = (row["dataset"], row["regularizer"])
        if row["test_loss"] is not None and (key not in best or row["test_loss"] < best[key]["test_loss"]):
            best[key] = row

    traces = []
    layout = dict(title=dict(text="Test loss of every plain grid configuration (lower is better; ★ best per "
                                  "dataset and regularizer)"),
                  margin=dict(l=10, r=10, t=80, b=10), height=360, showlegend=False,
                  coloraxis=dict(colorscale="Viridis_r", cmin=min(losses) if losses else 0.0,
                                 cmax=max(losses) if losses else 1.0, colorbar=dict(title=dict(text="test MSE"))),
                  annotations=[])
    width = 1.0 / len(datasets)
    for index, dataset in enumerate(datasets):
        suffix = "" if index == 0 else str(index + 1)
        cells = {(r["depth"], r["regularizer"], r["latent_dim"]): r for r in plain if r["dataset"] == dataset}
        values, labels = [], []
        gaps_x, gaps_y, gaps_text = [], [], []
        for (depth, regularizer), row_name in zip(row_keys, row_names):
            value_row, label_row = [], []
            for latent in latents:
                row = cells.get((depth, regularizer, latent))
                loss = row["test_loss"] if row else None
                value_row.append(loss if loss is not None else math.nan)
                star = " ★" if row is not None and best.get((dataset, regularizer)) is row else ""
                label_row.append(f"{loss:.4f}{star}" if loss is not None else "")
                if loss is None:
                    # heatmap gaps carry no text, so a text marker names the cell's status
                    gaps_x.append(str(latent))
                    gaps_y.append(row_name)
                    gaps_text.append(row["status"] if row else "not in grid")
            values.append(value_row)
            labels.append(label_row)
        axes = dict(xaxis=f"x{suffix}", yaxis=f"y{suffix}")
        traces.append(dict(type="heatmap", z=values, x=columns, y=row_names, text=labels, texttemplate="%{text}",
                           coloraxis="coloraxis", hoverongaps=False,
                           hovertemplate="latent %{x}, %{y}: test MSE %{z:.5f}<extra></extra>", **axes))
        if gaps_x:
            traces.append(dict(type="scatter", x=gaps_x, y=gaps_y, text=gaps_text, mode="text",
                               textfont=dict(color="gray"), hoverinfo="skip", **axes))
        domain = [index * width + (0.06 if index else 0.0), (index + 1) * width - (0.0 if index else 0.06)]
        layout[f"xaxis{suffix}"] = dict(domain=domain, title=dict(text="latent size"), type="category",
                                        categoryorder="array", categoryarray=columns)
        layout[f"yaxis{suffix}"] = dict(type="category", categoryorder="array", categoryarray=row_names,
                                        showticklabels=index == 0, anchor=f"x{suffix}")
        layout["annotations"].append(dict(text=dataset, x=sum(domain) / 2, y=1.02, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False))
    return go.Figure(dict(data=traces, layout=layout))
