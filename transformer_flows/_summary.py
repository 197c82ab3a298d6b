"""Numbers read off a sweep dataset for REPRODUCTION.md: 50% levels of the phase diagrams
against Γ∞,δ, and cluster-count statistics over starts."""

import numpy as np
import xarray as xr

from ._config import Config


def level_crossing(values: np.ndarray, betas: np.ndarray, level: float = 0.5) -> float:
    """The β at which `values` (a probability along the β grid, at one time) first falls
    from >= level to < level, by linear interpolation between grid points.

    Returns -inf if it is below `level` already at the first β, +inf if it never falls
    below it on the grid.
    """
    values, betas = np.asarray(values, float), np.asarray(betas, float)
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return float("inf")
    first = below[0]
    if first == 0:
        return float("-inf")
    v0, v1 = values[first - 1], values[first]
    b0, b1 = betas[first - 1], betas[first]
    return float(b0 + (v0 - level) / (v0 - v1) * (b1 - b0))


def _panels(dataset: xr.Dataset):
    axes = [dim for dim in ("n", "d", "weights", "rtol") if dim in dataset.dims]
    stacked = dataset.stack(panel=axes) if axes else dataset.expand_dims(panel=[0])
    for index in range(stacked.sizes["panel"]):
        part = stacked.isel(panel=index)
        yield {dim: part[dim].item() for dim in axes}, part


def phase_levels(dataset: xr.Dataset, config: Config, times=(15.0, 30.0), level: float = 0.5):
    """Per panel and time: the empirical β where P(clustered) crosses `level`, and the β of
    Γ∞,δ (theory, Q = K = V = I only) at that time."""
    from . import theory

    rows = []
    betas = dataset["beta"].values
    fine_betas = np.linspace(betas.min(), betas.max(), 2000)
    for labels, part in _panels(dataset):
        probability = part["clustered_fraction"].mean("start")
        for t in times:
            index = int(np.argmin(np.abs(part["time"].values - t)))
            saved_t = float(part["time"].values[index])
            empirical = level_crossing(probability.isel(time=index).values, betas, level)
            row = {**labels, "t": saved_t, "beta_empirical": empirical}
            if labels.get("weights", "identity") == "identity":
                curve = theory.phase_boundary(
                    np.array([saved_t]),
                    int(labels.get("n", part["n"])),
                    config.observables.delta,
                    fine_betas,
                    model=config.model.field,
                )
                row["beta_theory"] = float(np.asarray(curve)[0])
                row["difference"] = row["beta_empirical"] - row["beta_theory"]
            rows.append(row)
    return rows


def cluster_count_statistics(dataset: xr.Dataset, betas, times):
    """Statistics over starts of the number of clusters at the given β and times."""
    rows = []
    for labels, part in _panels(dataset):
        for beta in betas:
            for t in times:
                counts = part["cluster_count"].sel(beta=beta, method="nearest")
                counts = counts.sel(time=t, method="nearest").values.astype(int)
                values, frequencies = np.unique(counts, return_counts=True)
                rows.append(
                    {
                        **labels,
                        "beta": float(part["beta"].sel(beta=beta, method="nearest")),
                        "t": float(part["time"].sel(time=t, method="nearest")),
                        "starts": int(counts.size),
                        "mean": float(counts.mean()),
                        "median": float(np.median(counts)),
                        "q10": float(np.percentile(counts, 10)),
                        "q90": float(np.percentile(counts, 90)),
                        "histogram": {int(v): int(f) for v, f in zip(values, frequencies)},
                    }
                )
    return rows
