"""Across-head statistics of random multi-head weights against the head dimension N = d/H
(the `random_transformer` ensemble, docs/limits.md): the initialisation limit of the logits'
variance, N^{1−2α_A}; and the depth limit, the variance over draws of the final mean cosine
against L."""

from pathlib import Path

import numpy as np
import xarray as xr

from ._plot import _grid, save_figure


def head_variance_table(dataset: xr.Dataset, config) -> list[dict]:
    """Per α_A (swept, or fixed) and N = d/H, at the first β and the first entry of any other
    axis: the across-head variance of the logits at t = 0 averaged over starts, with its
    standard error, and the least-squares slope of log variance on log N over N >= 2 beside
    the prediction 1 − 2α_A."""
    from ._schema import weights_parameters

    values = dataset["head_logit_variance"].isel(time=0).where(dataset["succeeded"])
    # The first H of a heads axis (a scalar coordinate for one H).
    heads = int(values["heads"].values.flat[0]) if "heads" in values.coords else 1
    # One line per α_A (and per β: the predicted variance is β² N^{1−2α_A}).
    values = values.isel(beta=0) if "beta" in values.dims else values
    extra = [dim for dim in values.dims if dim not in ("d", "start", "alpha_A")]
    values = values.isel({dim: 0 for dim in extra}, drop=True)
    fixed = next(iter(weights_parameters(config).values()), {}).get("alpha_A")
    alphas = values["alpha_A"].values if "alpha_A" in values.dims else np.array([fixed])
    rows = []
    for index, alpha in enumerate(alphas):
        part = values.isel(alpha_A=index) if "alpha_A" in values.dims else values
        dims = part["d"].values
        mean = part.mean("start").values
        error = part.std("start", ddof=1).values / np.sqrt(part.sizes["start"])
        head_dim = dims / heads
        fit = head_dim >= 2
        slope = (
            float(np.polyfit(np.log(head_dim[fit]), np.log(mean[fit]), 1)[0])
            if fit.sum() >= 2
            else float("nan")
        )
        predicted = None if alpha is None else 1 - 2 * float(alpha)
        rows.append(
            {
                "alpha_A": None if alpha is None else float(alpha),
                "head_dim": head_dim.tolist(),
                "variance": mean.tolist(),
                "standard_error": error.tolist(),
                "slope": slope,
                "predicted_slope": predicted,
            }
        )
    return rows


def head_variance(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """The across-head variance of the logits at initialisation against N, log-log, with
    the predicted N^{1−2α_A} (β = 1)."""
    rows = head_variance_table(dataset, config)
    fig, (ax,) = _grid(1, 1, size=(5.0, 3.6))
    beta = float(dataset["beta"].values[0])
    for i, row in enumerate(rows):
        head_dim = np.asarray(row["head_dim"])
        label = f"slope {row['slope']:.2f}"
        if row["alpha_A"] is not None:
            label = rf"$\alpha_A = {row['alpha_A']:g}$: " + label
        ax.errorbar(
            head_dim,
            row["variance"],
            yerr=row["standard_error"],
            fmt="o",
            color=f"C{i}",
            capsize=3,
            label=label,
        )
        if row["predicted_slope"] is not None:
            ax.plot(
                head_dim,
                beta**2 * head_dim ** row["predicted_slope"],
                color=f"C{i}",
                linestyle="--",
                label=f"$\\beta^2 N^{{{row['predicted_slope']:g}}}$",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("head dimension $N = d/H$")
    ax.set_ylabel(r"across-head variance of $A_{h,ij}$ ($t = 0$)")
    ax.set_title(
        f"H = {int(dataset['heads'].values.flat[0]) if 'heads' in dataset.coords else 1}, "
        f"n = {config.model.n[0]}, {dataset.sizes['start']} draws"
        + (" [smoke]" if dataset.attrs.get("smoke") else ""),
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "head_variance.png")


def depth_variance_table(dataset: xr.Dataset, config, resamples: int = 400) -> list[dict]:
    """Per α_L (swept, or fixed) and depth L (the `layers` axis): the variance over starts
    (weight draws) of the final mean cosine, with the least-squares slope of log variance on
    log L and its 95% bootstrap interval (starts resampled, seed 0). Prediction: −1 for
    α_L = 1, 0 (order one) for α_L = ½ (docs/limits.md)."""
    from ._schema import weights_parameters

    values = dataset["mean_cosine"].isel(time=-1).where(dataset["succeeded"])
    keep = ("layers", "start", "alpha_L")
    values = values.isel({dim: 0 for dim in values.dims if dim not in keep}, drop=True)
    if "layers" not in values.dims:
        raise ValueError("figure depth_variance: needs a list of depths under model.layers")
    fixed = next(iter(weights_parameters(config).values()), {}).get("alpha_L")
    alphas = values["alpha_L"].values if "alpha_L" in values.dims else np.array([fixed])
    depths = values["layers"].values.astype(float)
    rng = np.random.default_rng(0)
    rows = []
    for index, alpha in enumerate(alphas):
        part = values.isel(alpha_L=index) if "alpha_L" in values.dims else values
        samples = part.transpose("layers", "start").values  # (L, starts)
        samples = samples[:, ~np.isnan(samples).any(axis=0)]  # failed solves are masked
        variance = samples.var(axis=1, ddof=1)
        slope = float(np.polyfit(np.log(depths), np.log(variance), 1)[0])
        boot = []
        for _ in range(resamples):
            pick = rng.integers(0, samples.shape[1], samples.shape)
            resampled = np.take_along_axis(samples, pick, axis=1).var(axis=1, ddof=1)
            if np.all(resampled > 0):  # a resample of one repeated draw has no log-variance
                boot.append(np.polyfit(np.log(depths), np.log(resampled), 1)[0])
        rows.append(
            {
                "alpha_L": None if alpha is None else float(alpha),
                "layers": depths.astype(int).tolist(),
                "variance": variance.tolist(),
                "slope": slope,
                "interval": [float(q) for q in np.quantile(boot, [0.025, 0.975])]
                if boot
                else [float("nan")] * 2,
                "draws": int(samples.shape[1]),
            }
        )
    return rows


def depth_variance(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """The variance over weight draws of the final mean cosine against the depth L, log-log,
    one line per α_L, with the 1/L reference of depth-μP."""
    rows = depth_variance_table(dataset, config)
    fig, (ax,) = _grid(1, 1, size=(5.0, 3.6))
    for i, row in enumerate(rows):
        low, high = row["interval"]
        label = f"slope {row['slope']:.2f} [{low:.2f}, {high:.2f}]"
        if row["alpha_L"] is not None:
            label = rf"$\alpha_L = {row['alpha_L']:g}$: " + label
        ax.plot(row["layers"], row["variance"], "o-", color=f"C{i}", label=label)
    first = rows[0]
    depths = np.asarray(first["layers"], float)
    # 1/L through the shallowest point of the α_L = 1 line (of the first line without one).
    anchor = next((row for row in rows if row["alpha_L"] == 1.0), first)
    reference = anchor["variance"][0] * depths[0] / depths
    ax.plot(depths, reference, "k--", label="$1/L$")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth $L$")
    ax.set_ylabel("Var over draws of the final mean cosine")
    ax.set_title(
        f"n = {config.model.n[0]}, d = {config.model.d[0]}, {first['draws']} draws"
        + (" [smoke]" if dataset.attrs.get("smoke") else ""),
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "depth_variance.png")
