"""Datasets of theory curves (Figs. 2 and 6) for `experiment: theory` configs."""

import numpy as np
import xarray as xr

from .. import theory


def theory_dataset(config) -> xr.Dataset:
    """Evaluate the thresholds and curves of `transformer_flows.theory` on the config's grids.

    Variables: `landscape_g` (d, beta, tau), `critical_angle` (d, beta), `wendel_probability`
    (d), `clustering_time_SA` / `clustering_time_USA` (beta); attributes: the exact d = 2
    large-β threshold β_B(n) and the printed n²/π² (typo T3). With a `long_context`
    section also `long_context_cosine`, `long_context_limit`, `long_context_correction`.
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
    if spec.long_context is not None:
        dataset = dataset.merge(_long_context_dataset(spec.long_context))
    return dataset


def _long_context_dataset(spec) -> xr.Dataset:
    """`long_context_cosine` (rho, gamma_ratio, n_tokens), its n → ∞ `long_context_limit` and
    (residual 0) the leading `long_context_correction`, at γ = ratio × 1/(1 - ρ)."""
    rho = np.asarray(spec.rho)[:, None, None]
    gamma = np.asarray(spec.gamma_ratio)[None, :, None] * theory.critical_gamma(rho)
    n = spec.token_counts[None, None, :]
    dims = ("rho", "gamma_ratio", "n_tokens")
    variables = {
        "long_context_cosine": (
            dims,
            theory.long_context_cosine(n, gamma, rho, residual=spec.residual),
        ),
        "long_context_limit": (
            dims[:2],
            theory.long_context_limit(gamma[..., 0], rho[..., 0], residual=spec.residual),
        ),
    }
    if spec.residual == 0:
        variables["long_context_correction"] = (
            dims,
            theory.long_context_correction(n, gamma, rho),
        )
    dataset = xr.Dataset(
        variables,
        coords={"rho": spec.rho, "gamma_ratio": spec.gamma_ratio, "n_tokens": n.ravel()},
        attrs={"long_context_residual": spec.residual},
    )
    dataset["long_context_cosine"].attrs["long_name"] = "<θ_i, θ_j> after one layer"
    return dataset
