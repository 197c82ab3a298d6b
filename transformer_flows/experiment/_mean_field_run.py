"""Running a `mean_field` config: `solve_mean_field` for every (β, κ) of the sweep.

One chunk per (β, κ) (`chunks/mean_field_chunk1/chunk_#####.nc`, fingerprinted with the
config's numerics and the pair), so an interrupted run resumes and a changed config is
recomputed. A solve that fails (max_steps reached, a non-finite state) is masked: NaN in every
saved value, `succeeded` False, counted in the `failed_solves` attribute, never a number.
The assembled dataset has dims (beta, kappa, time[, theta]) and, per (β, κ), the stationary
r (the mean of r(t) over the config's tail) beside `theory.stationary_order_parameter`.
"""

import math
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import theory
from .._mean_field import MeanFieldCircle, MeanFieldSolution, solve_mean_field
from ._build import dtype_of
from ._provenance import git_commit, provenance
from ._run_chunks import run_chunks
from ._schedule import ChunkTask
from ._schema_mean_field import MEAN_FIELD_OBSERVABLES, RESOLUTION, MeanFieldConfig
from ._store import chunk_path, fingerprint

SOLVER_CLASSES = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "kencarp3": diffrax.KenCarp3,
    "kencarp4": diffrax.KenCarp4,
    "kencarp5": diffrax.KenCarp5,
}
BRANCHES = ("clustered", "uniform")


def initial_density(config: MeanFieldConfig) -> np.ndarray:
    """ρ0(θ_j) = e^{c cos(kθ_j)} / Σ_j (2π/2M) e^{c cos(kθ_j)} on the grid θ_j = 2πj/(2M)
    (float64): a von Mises density of mass exactly 1 on the grid (uniform for c = 0)."""
    spec = config.mean_field
    size = 2 * spec.modes
    theta = 2 * np.pi * np.arange(size) / size
    values = np.exp(spec.concentration * (np.cos(spec.mode * theta) - 1))  # <= 1: no overflow
    return values / (2 * np.pi * values.mean())


def solve_pair(config: MeanFieldConfig, beta: float, kappa: float) -> MeanFieldSolution:
    """The solve of one (β, κ) of the sweep (κ = inf: the noiseless equation), never raising
    on a failed solve (`.result` says; its values are NaN)."""
    dtype = dtype_of(config.precision)
    spec, solver = config.mean_field, config.solver
    equation = MeanFieldCircle(
        jnp.asarray(beta, dtype),
        model=spec.model,
        kappa=None if math.isinf(kappa) else jnp.asarray(kappa, dtype),
        modes=spec.modes,
    )
    return solve_mean_field(
        equation,
        jnp.asarray(initial_density(config), dtype),
        jnp.asarray(config.time.times, dtype),
        solver=SOLVER_CLASSES[solver.name](),
        rtol=solver.rtol,
        atol=solver.atol,
        max_steps=solver.max_steps,
        throw=False,
    )


def _pairs(config: MeanFieldConfig) -> list[tuple[float, float]]:
    return [(beta, kappa) for beta in config.sweep.beta for kappa in config.sweep.kappas]


def _pair_chunk(config: MeanFieldConfig, beta: float, kappa: float) -> xr.Dataset:
    started = time.perf_counter()
    solution = jax.device_get(solve_pair(config, beta, kappa))
    succeeded = bool(solution.succeeded)
    variables = {
        "succeeded": (("combo",), np.array([succeeded], dtype=np.int8)),
        "num_steps": (("combo",), np.array([int(solution.stats["num_steps"])], dtype=np.int64)),
    }
    saved = {
        "order_parameter": solution.order_parameter,
        "resolution": solution.resolution,
        "density": solution.density,
    }
    for name in ("resolution", *config.observables.names):
        values = np.asarray(saved[name], dtype=np.float64)
        if not succeeded:  # nothing of a failed solve looks like a number
            values = np.full_like(values, np.nan)
        dims = ("combo", "time", "theta")[: values.ndim + 1]
        variables[name] = (dims, values[None])
    return xr.Dataset(variables, attrs={"compute_seconds": time.perf_counter() - started})


def run_mean_field(config: MeanFieldConfig, out: str | Path, *, progress: bool = True):
    """Run a `mean_field` config into directory `out`; resume from verified chunks.

    **Arguments:**
    - `config`: a validated `MeanFieldConfig`.
    - `out`: output directory, as for sweeps: a rerun with the same config resumes, another
      config is refused, a second concurrent run is refused.
    - `progress`: a progress bar over the (β, κ) pairs.

    **Returns:** the dataset (also `out/dataset.nc`) with dims (beta, kappa, time[, theta]):
    `resolution` and the observables of `config.observables.names`, `succeeded`, `resolved`
    and `num_steps` per pair, `stationary_order_parameter` (beta, kappa; NaN where a tail save
    is under-resolved: `unresolved_solves` counts them) and `theory_order_parameter` (branch,
    beta, kappa) of `theory.stationary_order_parameter` (NaN for κ = inf). Failed solves are masked
    (NaN, `succeeded` False); if any failed and `solver.allow_failures` is false,
    `SolveFailures` is raised after writing (the CLI's exit status 3).
    """
    dtype_of(config.precision)  # float64 without x64: refused before anything runs
    pairs = _pairs(config)
    numerics = config.numerics()
    commit = git_commit()
    tasks = [
        ChunkTask(
            index,
            str(chunk_path("mean_field_chunk1", index)),
            fingerprint({"config": numerics, "beta": beta, "kappa": str(kappa), "chunk": index}),
            1,
        )
        for index, (beta, kappa) in enumerate(pairs)
    ]

    def compute(task: ChunkTask, device, bar) -> xr.Dataset:
        # On the default device: a `jax.default_device` context is part of the cache key of
        # every jitted call, and would compile anew what a direct solve compiled already.
        return _pair_chunk(config, *pairs[task.key])

    return run_chunks(
        config,
        out,
        tasks,
        compute,
        lambda pieces: assemble_mean_field(config, pieces, commit),
        lambda dataset: failure_message(config, dataset),
        numerics=numerics,
        unit="solve",
        progress=progress,
        devices=jax.local_devices()[:1],
    )


def failure_message(config: MeanFieldConfig, dataset: xr.Dataset) -> str:
    failed = ~dataset["succeeded"].values
    where = [
        f"(β={beta:g}, κ={kappa:g})"
        for (beta, kappa), bad in zip(_pairs(config), failed.ravel(), strict=True)
        if bad
    ]
    fix = (
        "raise solver.max_steps or loosen the tolerances"
        if config.solver.implicit
        else "solver.name=kencarp4 (the diffusion implicit: its step is not limited by the "
        "stiffness M²/κ), or raise solver.max_steps"
    )
    return (
        f"{int(failed.sum())} of {failed.size} mean-field solves failed (max_steps="
        f"{config.solver.max_steps} reached, or a non-finite state) at {', '.join(where[:8])}"
        f"{' …' if len(where) > 8 else ''}. They are masked in the dataset (NaN, `succeeded` "
        f"False). Fix: {fix}; or set solver.allow_failures=true to accept a dataset with "
        "masked entries."
    )


def assemble_mean_field(
    config: MeanFieldConfig, pieces: dict, commit: str = "unknown"
) -> xr.Dataset:
    """The chunks of `run_mean_field` as one labelled dataset (see `run_mean_field`)."""
    betas, kappas = list(config.sweep.beta), config.sweep.kappas
    ordered = [pieces[index] for index in range(len(betas) * len(kappas))]
    seconds = sum(float(piece.attrs.get("compute_seconds", 0.0)) for piece in ordered)
    stacked = xr.concat([piece.drop_attrs() for piece in ordered], dim="combo")
    shape = (len(betas), len(kappas))
    times = config.time.times
    variables = {}
    for name, variable in stacked.data_vars.items():
        values = variable.values.reshape(shape + variable.shape[1:])
        dims = ("beta", "kappa", *variable.dims[1:])
        variables[name] = (dims, values.astype(bool) if name == "succeeded" else values)
    size = 2 * config.mean_field.modes
    dataset = xr.Dataset(
        variables,
        coords={
            "beta": betas,
            "kappa": kappas,
            "time": times,
            "theta": 2 * np.pi * np.arange(size) / size,
        },
    )
    if "density" not in dataset:
        dataset = dataset.drop_vars("theta")
    tail = times >= config.observables.stationary_from * times[-1] - 1e-12 * times[-1]
    tail[-1] = True
    # A stationary value only where every tail save is resolved (the solver's spectral
    # truncation is trustworthy there); failed solves are NaN already.
    resolved = (dataset["resolution"].isel(time=tail) <= config.observables.resolution_limit).all(
        "time"
    )
    stationary = dataset["order_parameter"].isel(time=tail).mean("time")
    dataset["stationary_order_parameter"] = stationary.where(resolved)
    dataset["resolved"] = resolved & dataset["succeeded"]
    dataset["theory_order_parameter"] = (
        ("branch", "beta", "kappa"),
        _theory(config.mean_field.model, betas, kappas),
    )
    dataset = dataset.assign_coords(branch=list(BRANCHES))
    for name, text in {**MEAN_FIELD_OBSERVABLES, "resolution": RESOLUTION}.items():
        if name in dataset:
            dataset[name].attrs["long_name"] = text
    dataset["resolved"].attrs["long_name"] = (
        f"succeeded, and every save of the tail has resolution <= "
        f"{config.observables.resolution_limit:g} (else no stationary r)"
    )
    dataset["stationary_order_parameter"].attrs["long_name"] = (
        f"mean of r(t) over t >= {config.observables.stationary_from:g} t1"
    )
    dataset["theory_order_parameter"].attrs["long_name"] = (
        "theory.stationary_order_parameter (n = ∞), branch clustered or uniform; NaN for κ = inf"
    )
    dataset["succeeded"].attrs["long_name"] = "the solve reached t1 (failed solves are masked)"
    dataset["beta"].attrs["long_name"] = "inverse temperature β"
    dataset["kappa"].attrs["long_name"] = "inverse noise κ (inf: no noise)"
    dataset["time"].attrs["long_name"] = "time t"
    dataset.attrs.update(provenance(config, seconds, commit))
    dataset.attrs["model"] = config.mean_field.model
    dataset.attrs["modes"] = config.mean_field.modes
    dataset.attrs["failed_solves"] = int((~dataset["succeeded"]).sum())
    dataset.attrs["unresolved_solves"] = int((dataset["succeeded"] & ~dataset["resolved"]).sum())
    dataset.attrs["total_solves"] = int(dataset["succeeded"].size)
    return dataset


def _theory(model: str, betas: list[float], kappas: list[float]) -> np.ndarray:
    """theory.stationary_order_parameter per branch, β and finite κ (NaN for κ = inf)."""
    values = np.full((len(BRANCHES), len(betas), len(kappas)), np.nan)
    finite = np.isfinite(kappas)
    if finite.any():
        for b, branch in enumerate(BRANCHES):
            for i, beta in enumerate(betas):
                values[b, i, finite] = theory.stationary_order_parameter(
                    beta=beta, kappa=np.asarray(kappas)[finite], d=2, model=model, branch=branch
                )
    return values


def mean_field_summary(dataset: xr.Dataset, config: MeanFieldConfig) -> dict:
    """The numbers of a `mean_field` run: per (β, κ) whether the solve succeeded and its tail
    is resolved, its steps, r at t1, the stationary r (mean over the tail) and the theory's two
    branches (`clustered`, `uniform`: they differ only in a bistable window), the difference
    stationary − clustered and the resolution at t1. A failed solve shows null, never a
    number; an under-resolved one has a null stationary r."""
    rows = []
    for beta in dataset["beta"].values:
        for kappa in dataset["kappa"].values:
            part = dataset.sel(beta=beta, kappa=kappa)
            stationary = float(part["stationary_order_parameter"])
            clustered = float(part["theory_order_parameter"].sel(branch="clustered"))
            row = {
                "beta": float(beta),
                "kappa": float(kappa),
                "succeeded": bool(part["succeeded"]),
                "resolved": bool(part["resolved"]),
                "num_steps": int(part["num_steps"]),
                "r_t1": float(part["order_parameter"].isel(time=-1)),
                "r_stationary": stationary,
                "theory_clustered": clustered,
                "theory_uniform": float(part["theory_order_parameter"].sel(branch="uniform")),
                "difference": stationary - clustered,
            }
            row["resolution_t1"] = float(part["resolution"].isel(time=-1))
            rows.append(row)
    return {
        "name": config.name,
        "model": config.mean_field.model,
        "modes": config.mean_field.modes,
        "solver": str(dataset.attrs.get("solver", "")),
        "t1": float(config.time.t1),
        "stationary_from": float(config.observables.stationary_from * config.time.t1),
        "failed_solves": int(dataset.attrs["failed_solves"]),
        "unresolved_solves": int(dataset.attrs.get("unresolved_solves", 0)),
        "total_solves": int(dataset.attrs["total_solves"]),
        "stationary_order_parameter": rows,
    }
