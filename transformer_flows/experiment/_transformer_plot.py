"""Across-head statistics of random multi-head weights against the head dimension N = d/H
(the `random_transformer` ensemble, docs/limits.md): the initialisation limit of the logits'
variance, N^{1−2α_A}."""

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

    heads = config.model.heads or 1
    values = dataset["head_logit_variance"].isel(time=0).where(dataset["succeeded"])
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
        f"H = {config.model.heads}, n = {config.model.n[0]}, {dataset.sizes['start']} draws"
        + (" [smoke]" if dataset.attrs.get("smoke") else ""),
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "head_variance.png")
