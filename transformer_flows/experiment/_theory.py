"""Datasets of theory curves (Figs. 2 and 6) for `experiment: theory` configs."""

import numpy as np
import xarray as xr

from .. import theory


def theory_dataset(config) -> xr.Dataset:
    """Evaluate the thresholds and curves of `transformer_flows.theory` on the config's grids.

    Variables: `landscape_g` (d, beta, tau), `critical_angle` (d, beta), `wendel_probability`
    (d), `clustering_time_SA` / `clustering_time_USA` (beta); attributes: the exact d = 2
    large-β threshold β_B(n) and the printed n²/π² (typo T3).
    """
    spec = config.theory
    beta = np.asarray(spec.beta)
    tau = np.asarray(spec.tau)
    d = np.asarray(spec.d)
    # Arrays of one shape in, int d (the theory functions' signatures).
    beta_grid, tau_grid = np.meshgrid(beta, tau, indexing="ij")
    landscape = np.stack(
        [np.asarray(theory.landscape_g(tau_grid, beta_grid, dim)) for dim in spec.d]
    )
    critical = np.stack([np.asarray(theory.critical_angle(beta, dim)) for dim in spec.d])
    wendel = np.array([float(theory.wendel_probability(spec.n, dim)) for dim in spec.d])
    clustering = {
        model: np.asarray(theory.clustering_time(spec.n, beta, spec.delta, model))
        for model in ("SA", "USA")
    }
    dataset = xr.Dataset(
        {
            "landscape_g": (("d", "beta", "tau"), landscape),
            "critical_angle": (("d", "beta"), critical),
            "wendel_probability": (("d",), wendel),
            "clustering_time_SA": (("beta",), clustering["SA"]),
            "clustering_time_USA": (("beta",), clustering["USA"]),
        },
        coords={"d": d, "beta": beta, "tau": tau},
    )
    dataset["landscape_g"].attrs["long_name"] = "g(τ) (App. B)"
    dataset["critical_angle"].attrs["long_name"] = "τ*_β: β sin²τ = (d-1) cos τ"
    dataset.attrs.update(
        n=spec.n,
        delta=spec.delta,
        large_beta_threshold=float(theory.large_beta_threshold(spec.n)),
        printed_threshold=spec.n**2 / np.pi**2,
    )
    return dataset
