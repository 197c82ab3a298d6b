"""Numbers read off a sweep dataset for REPRODUCTION.md: 50% levels of the phase diagrams
against Γ∞,δ, and cluster-count statistics over starts. Failed solves are excluded and
counted; the summary is strict JSON (no NaN or Infinity tokens)."""

import math
import warnings

import numpy as np
import xarray as xr

from .. import theory
from ._registry import FIELDS

# Dimensions summarised (or drawn) inside one panel; the others (n, d, weights, rtol, swept
# parameters) give one row (or panel) per value.
INNER_DIMS = ("beta", "start", "time", "particle", "component", "tau")


def level_crossing(values: np.ndarray, betas: np.ndarray, level: float = 0.5) -> float:
    """The β at which `values` (a probability along the β grid, at one time) first falls
    from >= level to < level, by linear interpolation between grid points.

    Returns -inf if it is below `level` already at the first β, +inf if it never falls
    below it on the grid, NaN if a value it needs is missing (failed solves only).
    """
    values, betas = np.asarray(values, float), np.asarray(betas, float)
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return float("nan") if np.isnan(values).any() else float("inf")
    first = below[0]
    if first == 0:
        return float("-inf")
    v0, v1 = values[first - 1], values[first]
    if np.isnan(values[:first]).any():
        return float("nan")
    b0, b1 = betas[first - 1], betas[first]
    return float(b0 + (v0 - level) / (v0 - v1) * (b1 - b0))


def _panels(dataset: xr.Dataset):
    axes = [dim for dim in dataset.dims if dim not in INNER_DIMS]
    stacked = dataset.stack(panel=axes) if axes else dataset.expand_dims(panel=[0])
    for index in range(stacked.sizes["panel"]):
        part = stacked.isel(panel=index)
        yield {dim: part[dim].item() for dim in axes}, part


def _crossing_entry(value: float) -> dict:
    """A crossing as JSON: a number, or null with the reason."""
    if math.isfinite(value):
        return {"beta_empirical": value}
    reason = {
        math.inf: "never below the level on the β grid",
        -math.inf: "below the level already at the first β",
    }.get(value, "undetermined: failed solves at the β values it needs")
    return {"beta_empirical": None, "beta_empirical_note": reason}


def crossing_interval(
    fractions: np.ndarray, betas: np.ndarray, level: float = 0.5, resamples: int = 1000, seed=0
) -> tuple[float, float]:
    """95% bootstrap percentile interval of `level_crossing` of the mean over starts.

    `fractions` (beta, start): the clustered fraction of each start (NaN for failed solves,
    left out of each mean). Starts are resampled with replacement, the same resample at
    every β (the starts of one β grid point are independent draws, as are those of others).
    A bound is ±inf when more than 2.5% of the resamples never cross (or cross before the
    first β): the data then do not bound β on that side.
    """
    fractions = np.asarray(fractions, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, fractions.shape[1], size=(resamples, fractions.shape[1]))
    with warnings.catch_warnings():
        # A resample of only failed solves at some β has no mean there: NaN, as intended.
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(fractions[:, picks], axis=-1).T  # (resamples, beta)
    crossings = np.array([level_crossing(row, betas, level) for row in means])
    crossings = crossings[~np.isnan(crossings)]
    if crossings.size == 0:
        return float("nan"), float("nan")
    # Order statistics (no interpolation): ±inf crossings must not turn into inf - inf.
    low = np.percentile(crossings, 2.5, method="lower")
    high = np.percentile(crossings, 97.5, method="higher")
    return float(low), float(high)


def _interval_entry(low: float, high: float) -> dict:
    if math.isnan(low):
        return {"beta_ci95": None}
    bounds = [value if math.isfinite(value) else None for value in (low, high)]
    entry = {"beta_ci95": bounds}
    if None in bounds:
        entry["beta_ci95_note"] = "null bound: the resampled P does not cross on that side"
    return entry


def phase_levels(dataset: xr.Dataset, config, times=(15.0, 30.0), level: float = 0.5):
    """Per panel and time: the empirical β where P(clustered) crosses `level` (failed solves
    excluded from the mean over starts) with its 95% bootstrap interval over starts, and the
    β of Γ∞,δ (theory, Q = K = V = I, for fields with a `theory_model`) at that time."""
    rows = []
    model = FIELDS.theory_model(config.model.field)
    # The theory curves are those of attention alone: a block (model.feed_forward) has none.
    block = getattr(config.model, "feed_forward", None) is not None
    if block:
        model = None
    betas = dataset["beta"].values
    fine_betas = np.linspace(betas.min(), betas.max(), 2000)
    for labels, part in _panels(dataset):
        fraction = part["clustered_fraction"].where(part["succeeded"])
        probability = fraction.mean("start", skipna=True)
        for t in times:
            index = int(np.argmin(np.abs(part["time"].values - t)))
            saved_t = float(part["time"].values[index])
            empirical = level_crossing(probability.isel(time=index).values, betas, level)
            interval = crossing_interval(
                fraction.isel(time=index).transpose("beta", "start").values, betas, level
            )
            row = {
                **labels,
                "t": saved_t,
                **_crossing_entry(empirical),
                **_interval_entry(*interval),
            }
            identity = labels.get("weights", "identity") == "identity"
            if identity and model is not None:
                curve = theory.phase_boundary(
                    np.array([saved_t]),
                    int(labels.get("n", part["n"])),
                    config.observables.delta,
                    fine_betas,
                    model=model,
                )
                beta_theory = float(np.asarray(curve)[0])
                row["beta_theory"] = beta_theory if math.isfinite(beta_theory) else None
                if row["beta_empirical"] is not None and row["beta_theory"] is not None:
                    row["difference"] = row["beta_empirical"] - row["beta_theory"]
            elif identity and block:
                row["beta_theory"] = None
                row["beta_theory_note"] = "no theory: Γ∞,δ is of attention without feed-forward"
            rows.append(row)
    return rows


def cluster_count_statistics(dataset: xr.Dataset, betas, times):
    """Statistics over the starts whose solve succeeded of the number of clusters at the
    given β and times; `failed` counts the starts left out."""
    rows = []
    for labels, part in _panels(dataset):
        for beta in betas:
            at_beta = part.sel(beta=beta, method="nearest")
            for t in times:
                here = at_beta.sel(time=t, method="nearest")
                ok = here["succeeded"].values.astype(bool)
                counts = here["cluster_count"].values[ok].astype(int)
                row = {
                    **labels,
                    "beta": float(at_beta["beta"]),
                    "t": float(here["time"]),
                    "starts": int(ok.size),
                    "failed": int((~ok).sum()),
                }
                if counts.size:
                    values, frequencies = np.unique(counts, return_counts=True)
                    row.update(
                        mean=float(counts.mean()),
                        median=float(np.median(counts)),
                        q10=float(np.percentile(counts, 10)),
                        q90=float(np.percentile(counts, 90)),
                        histogram={
                            int(v): int(f) for v, f in zip(values, frequencies, strict=True)
                        },
                    )
                rows.append(row)
    return rows


def summary(dataset: xr.Dataset, config, times, betas, level: float = 0.5) -> dict:
    """The summary of a simulation run (see `transformer-flows summarize`)."""
    result = {
        "name": config.name,
        "solver": dataset.attrs.get("solver"),
        "starts": int(dataset.sizes["start"]),
        "failed_solves": int(dataset.attrs.get("failed_solves", 0)),
        "total_solves": int(dataset.attrs.get("total_solves", dataset["succeeded"].size)),
        "compute_seconds": float(dataset.attrs["compute_seconds"]),
    }
    if "clustered_fraction" in dataset:
        result["phase_levels"] = phase_levels(dataset, config, times, level)
    if "cluster_count" in dataset:
        result["cluster_counts"] = cluster_count_statistics(dataset, betas, times)
    return result


def summary_table(result: dict) -> str:
    """A summary (of `summary` or `fit_summary`) as plain aligned text: the scalar entries as
    `key: value` lines, then each list of rows as a table with a header line. Numbers get 4
    significant digits, null is shown as `-`; the JSON form keeps every digit."""
    lines = []
    tables = {}
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            tables[key] = value
        else:
            lines.append(f"{key}: {_cell(value)}")
    for key, rows in tables.items():
        columns = list(dict.fromkeys(column for row in rows for column in row))
        cells = [columns] + [[_cell(row.get(column)) for column in columns] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        lines += ["", f"{key}:"]
        for index, line in enumerate(cells):
            lines.append(
                "  " + "  ".join(text.rjust(w) for text, w in zip(line, widths, strict=True))
            )
            if index == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)
