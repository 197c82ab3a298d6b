"""Figures of `mean_field` runs: r(t) per κ, and the stationary r against κ on the curve of
`theory.stationary_order_parameter` (matplotlib; no numerics beyond the theory overlay)."""

from pathlib import Path

import numpy as np
import xarray as xr

from ._plot import _grid, save_figure


def _title(dataset: xr.Dataset, config) -> str:
    spec = config.mean_field
    text = f"mean field, {spec.model}, M = {spec.modes} modes, {dataset.attrs.get('solver', '')}"
    failed = int(dataset.attrs.get("failed_solves", 0))
    if failed:
        text += f"\n{failed} of {dataset.attrs['total_solves']} solves failed (not drawn)"
    unresolved = int(dataset.attrs.get("unresolved_solves", 0))
    if unresolved:
        text += f"\n{unresolved} under-resolved at the end (no stationary r: raise modes)"
    return text + (" [smoke]" if dataset.attrs.get("smoke") else "")


def mean_field_order_parameter(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """r(t) per κ, one panel per β, up to the first under-resolved save; the theory's
    stationary r (clustered branch) dashed."""
    betas = dataset["beta"].values
    limit = config.observables.resolution_limit
    fig, axes = _grid(len(betas), config.plot.max_panels_per_row, size=(4.6, 3.4))
    time = dataset["time"].values
    for ax, beta in zip(axes, betas, strict=True):
        part = dataset.sel(beta=beta)
        for i, kappa in enumerate(part["kappa"].values):
            color = f"C{i % 10}"
            label = r"$\kappa = \infty$" if np.isinf(kappa) else rf"$\kappa = {kappa:g}$"
            series = part["order_parameter"].sel(kappa=kappa).values
            unresolved = part["resolution"].sel(kappa=kappa).values > limit
            if np.all(np.isnan(series)):
                label += " (failed)"
            elif unresolved.any():  # not drawn from the first under-resolved save on
                label += rf" (under-resolved from $t = {time[unresolved.argmax()]:g}$)"
                series = np.where(np.cumsum(unresolved) > 0, np.nan, series)
            ax.plot(time, series, color=color, label=label)
            exact = float(part["theory_order_parameter"].sel(branch="clustered", kappa=kappa))
            if np.isfinite(exact):
                ax.axhline(exact, color=color, linestyle="--", linewidth=0.8)
        ax.set_xlabel("time t")
        ax.set_ylabel(r"order parameter $r(t) = |\int e^{i\theta}\rho\,d\theta|$")
        ax.set_title(rf"$\beta = {beta:g}$ (dashed: theory, $t \to \infty$)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle(_title(dataset, config), fontsize=9)
    return save_figure(fig, Path(out) / "mean_field_order_parameter.png")


def mean_field_stationary(dataset: xr.Dataset, config, out: str | Path) -> list[Path]:
    """The stationary r against κ per β (markers), on theory.stationary_order_parameter
    (solid: clustered branch; dotted, USA only: the uniform branch)."""
    from .. import theory

    fig, (ax,) = _grid(1, 1, size=(5.0, 3.6))
    kappas = dataset["kappa"].values
    finite = kappas[np.isfinite(kappas)]
    model = config.mean_field.model
    for i, beta in enumerate(dataset["beta"].values):
        color = f"C{i % 10}"
        if finite.size:
            low, high = finite.min(), finite.max()
            grid = np.linspace(max(low * 0.9, 1e-3), high * 1.05 if high > low else low * 1.5, 40)
            # The branches differ only where the transition is discontinuous (USA): SA's
            # uniform branch is its clustered one (and each point costs a Newton solve).
            branches = (("clustered", "-"), ("uniform", ":"))[: 2 if model == "USA" else 1]
            for branch, style in branches:
                curve = theory.stationary_order_parameter(
                    beta=float(beta), kappa=grid, d=2, model=model, branch=branch
                )
                ax.plot(
                    grid,
                    curve,
                    style,
                    color=color,
                    label=rf"theory, $\beta = {beta:g}$" if branch == "clustered" else None,
                )
        values = dataset["stationary_order_parameter"].sel(beta=beta).values
        ax.plot(
            kappas[np.isfinite(kappas)],
            values[np.isfinite(kappas)],
            "o",
            color=color,
            label=rf"mean-field solve, $\beta = {beta:g}$",
        )
    ax.set_xlabel(r"$\kappa$ (inverse noise)")
    ax.set_ylabel("stationary order parameter $r$")
    ax.set_title(_title(dataset, config), fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "mean_field_stationary.png")
