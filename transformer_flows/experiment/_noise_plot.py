"""The stationary order parameter of a noisy sweep on the circle (`model.noise`) against
`theory.stationary_order_parameter`: a time average per start, a t-interval over starts."""

from pathlib import Path

import numpy as np
import scipy.stats
import xarray as xr

from ._plot import _grid, save_figure


def stationary_order_parameter_table(dataset: xr.Dataset, config) -> list[dict]:
    """Per β and κ: the order parameter r = |(1/n) Σ e^{iθ_j}| averaged over the second half of
    the time axis (t >= t1/2) per start; the mean over starts with its 95% Student-t interval
    (starts are independent; each start's time average is one sample); the theory's value
    (n = ∞, step 0, `branch="clustered"`). Needs one n, d = 2, the identity ensemble and an
    independent noise with κ swept (`sweep.params.kappa`) or fixed."""
    from .. import theory

    if config.model.noise is None or config.model.noise.kind != "independent":
        raise ValueError(
            "figure stationary_order_parameter: draws noisy sweeps with model.noise.kind = "
            "independent (the theory's noise)"
        )
    if config.model.field not in ("SA", "USA"):
        raise ValueError(
            "figure stationary_order_parameter: the theory covers fields SA and USA, got "
            f"{config.model.field!r}"
        )
    r = dataset["order_parameter"]
    keep = r["time"] >= r["time"].values[-1] / 2
    per_start = r.where(dataset["succeeded"]).sel(time=keep).mean("time")
    extra = [dim for dim in per_start.dims if dim not in ("beta", "start", "kappa")]
    per_start = per_start.squeeze(extra, drop=True)
    kappas = (
        per_start["kappa"].values
        if "kappa" in per_start.dims
        else np.array([config.model.noise.kappa])
    )
    rows = []
    for beta in per_start["beta"].values:
        exact = theory.stationary_order_parameter(
            beta=float(beta), kappa=kappas, d=2, model=config.model.field
        )
        for index, kappa in enumerate(kappas):
            part = per_start.sel(beta=beta)
            if "kappa" in part.dims:
                part = part.isel(kappa=index)
            samples = part.values[np.isfinite(part.values)]
            count = samples.size
            mean = float(samples.mean()) if count else float("nan")
            half = (
                float(scipy.stats.t.ppf(0.975, count - 1) * samples.std(ddof=1) / np.sqrt(count))
                if count > 1
                else float("nan")
            )
            rows.append(
                {
                    "beta": float(beta),
                    "kappa": float(kappa),
                    "r": mean,
                    "half_width": half,
                    "starts": int(count),
                    "theory": float(np.atleast_1d(exact)[index]),
                }
            )
    return rows


def stationary_order_parameter(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """r against κ: the sweep's time averages (95% intervals over starts) on the theory curve."""
    from .. import theory

    rows = stationary_order_parameter_table(dataset, config)
    fig, (ax,) = _grid(1, 1, size=(5.0, 3.6))
    for i, beta in enumerate(sorted({row["beta"] for row in rows})):
        part = [row for row in rows if row["beta"] == beta]
        kappas = np.array([row["kappa"] for row in part])
        grid = np.linspace(max(kappas.min() * 0.9, 1e-3), kappas.max() * 1.05, 200)
        curve = theory.stationary_order_parameter(
            beta=beta, kappa=grid, d=2, model=config.model.field
        )
        ax.plot(grid, curve, color=f"C{i}", label=rf"theory, $\beta = {beta:g}$ ($n = \infty$)")
        ax.errorbar(
            kappas,
            [row["r"] for row in part],
            yerr=[row["half_width"] for row in part],
            fmt="o",
            color=f"C{i}",
            capsize=3,
            label=rf"particles, $n = {config.model.n[0]}$ (95% CI)",
        )
    ax.set_xlabel(r"$\kappa$ (inverse noise)")
    ax.set_ylabel("stationary order parameter $r$")
    ax.set_title(
        f"{config.model.field} on the circle, {dataset.attrs.get('solver', '')}"
        + (" [smoke]" if dataset.attrs.get("smoke") else ""),
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "stationary_order_parameter.png")
