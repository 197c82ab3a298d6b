"""Figures of `pretrained` runs: statistics per layer (model, discrete map and flow overlaid)
and histograms of <θ_i, θ_j> per layer in the style of GLPR (arXiv:2312.10794) Fig. 1."""

from pathlib import Path

import numpy as np
import xarray as xr

from ._plot import _grid, save_figure

STYLE = {
    "model": {"color": "k", "marker": "o", "markersize": 3, "linestyle": "-", "label": "model"},
    "discrete_map": {"color": "C1", "linestyle": "--", "label": "discrete map"},
    "flow": {"color": "C0", "linestyle": "-", "label": "flow"},
}


def _title(dataset: xr.Dataset) -> str:
    texts = dataset.sizes["text"]
    tokens = dataset["num_tokens"].values
    span = f"{tokens.min()}" if tokens.min() == tokens.max() else f"{tokens.min()}–{tokens.max()}"
    text = (
        f"{dataset.attrs.get('family', '?')} ({dataset.attrs.get('trained_layers', '?')} trained "
        f"layers, d = {dataset.attrs.get('d_model', '?')}), {texts} text(s) of {span} tokens"
    )
    return text + (" [smoke]" if dataset.attrs.get("smoke") else "")


def _last_common(dataset: xr.Dataset) -> float:
    name = next(iter(v for v in dataset.data_vars if dataset[v].dims[-1] == "layer"))
    finite = np.isfinite(dataset[name]).all(("source", "text"))
    layers = dataset["layer"].values[finite.values]
    return float(layers.max()) if layers.size else float(dataset["layer"].max())


def pretrained_statistics(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """One panel per statistic against the layer: the mean over texts per source (the band is
    the range over texts)."""
    names = [name for name in config.statistics if name in dataset]
    fig, axes = _grid(len(names), min(3, config.plot.max_panels_per_row))
    layers = dataset["layer"].values
    depth = _last_common(dataset)
    for ax, name in zip(axes, names, strict=True):
        for source in dataset["source"].values:
            values = dataset[name].sel(source=source)
            shown = np.isfinite(values).any("text").values
            mean = values.mean("text").values
            style = STYLE.get(str(source), {"label": str(source)})
            ax.plot(layers[shown], mean[shown], **style)
            if dataset.sizes["text"] > 1:
                ax.fill_between(
                    layers[shown],
                    values.min("text").values[shown],
                    values.max("text").values[shown],
                    color=style.get("color"),
                    alpha=0.15,
                    linewidth=0,
                )
        if layers.max() > 2 * depth > 0:
            ax.set_xscale("symlog", linthresh=max(depth, 1.0))
        ax.set(xlabel="layer l (flow time t)", title=name)
    axes[0].legend(fontsize=8)
    fig.suptitle(_title(dataset), fontsize=9)
    return save_figure(fig, Path(out) / "pretrained_statistics.png")


def histogram_layers(dataset: xr.Dataset, config) -> list[float]:
    """The layers with a histogram panel: `plot.histogram_layers` (each at the nearest saved
    layer), or 0, 1 and the quarters of the depth (and the tail's last time)."""
    layers = dataset["layer"].values
    if config.plot.histogram_layers is not None:
        wanted = config.plot.histogram_layers
    else:
        depth = _last_common(dataset)
        wanted = [0, 1, *np.round(np.array([0.25, 0.5, 0.75, 1.0]) * depth), layers.max()]
    chosen = [float(layers[np.argmin(np.abs(layers - value))]) for value in wanted]
    return sorted(set(chosen))


def pretrained_histograms(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """One panel per selected layer: the density of <θ_i, θ_j> over the pairs i < j of all
    texts (each text weighted by its number of pairs), per source."""
    chosen = histogram_layers(dataset, config)
    fig, axes = _grid(len(chosen), config.plot.max_panels_per_row, size=(3.4, 2.6))
    edges = dataset["bin_edges"].values
    tokens = dataset["num_tokens"].values.astype(float)
    weights = xr.DataArray(tokens * (tokens - 1) / 2, dims="text")
    depth = _last_common(dataset)
    for ax, layer in zip(axes, chosen, strict=True):
        at = dataset["cosine_histogram"].sel(layer=layer)
        for source in dataset["source"].values:
            density = at.sel(source=source)
            if not np.isfinite(density).all():
                continue
            pooled = ((density * weights).sum("text") / weights.sum()).values
            style = STYLE.get(str(source), {"label": str(source)})
            if source == "model":
                ax.stairs(pooled, edges, fill=True, color="0.6", label="model")
            else:
                ax.stairs(
                    pooled,
                    edges,
                    color=style.get("color"),
                    linestyle=style.get("linestyle", "-"),
                    label=style.get("label"),
                )
        where = f"layer {layer:g}" if layer <= depth else f"flow, t = {layer:.3g}"
        ax.set(title=where, xlim=(-1, 1), xlabel="<x_i, x_j>")
    axes[0].set_ylabel("density over pairs")
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(dataset), fontsize=9)
    return save_figure(fig, Path(out) / "pretrained_histograms.png")
