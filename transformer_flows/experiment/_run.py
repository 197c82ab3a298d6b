"""Running an experiment into its output directory: sweeps chunk by chunk (resumable,
verified), theory datasets, and fits (`_fit_run`). Failed solves are masked and counted."""

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from .._progress import compile_notice
from ._plan import Plan, Shape, plan_sweep
from ._provenance import git_commit, provenance
from ._registry import OBSERVABLES
from ._run_chunks import claimed_run, run_chunks
from ._schedule import ChunkTask
from ._schema import (
    ConfigError,
    SimulationConfig,
    TheoryConfig,
    config_from_dict,
    import_fields,
)
from ._store import RunDirectory, chunk_path, fingerprint

# Integer observables (cluster counts) of a failed solve hold this value; `succeeded` says
# which entries are real. Float observables of a failed solve are NaN.
FAILED_INTEGER = -1


def run_experiment(
    config,
    out: str | Path,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset | dict:
    """Run a validated config into directory `out`: a sweep, theory or pretrained-model dataset
    (returned), or a fit (its metrics are returned).

    A `model.field` given as an import path `module:Class` is imported here, and only here,
    after the rest of the config validated (refused under TRANSFORMER_FLOWS_NO_IMPORTS)."""
    config = import_fields(config)
    if config.experiment == "theory":
        return run_theory(config, out)
    if config.experiment == "fit":
        from ._fit_run import run_fit

        return run_fit(config, out, progress=progress)
    if config.experiment == "pretrained":
        from ._pretrained_run import run_pretrained

        return run_pretrained(config, out, progress=progress)
    if config.experiment == "mean_field":
        from ._mean_field_run import run_mean_field

        return run_mean_field(config, out, progress=progress)
    return run_sweep(config, out, progress=progress, on_chunk=on_chunk)


def run_theory(config: TheoryConfig, out: str | Path) -> xr.Dataset:
    from ._theory import theory_dataset

    with claimed_run(out, config, config.numerics()) as run:
        started = time.perf_counter()
        dataset = theory_dataset(config)
        dataset.attrs.update(provenance(config, time.perf_counter() - started, git_commit()))
        run.write_dataset(dataset)
    return dataset


def run_sweep(
    config: SimulationConfig,
    out: str | Path,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> xr.Dataset:
    """Run a simulation sweep, chunk by chunk, into `out`; resume from verified chunks.

    **Arguments:**
    - `config`: a validated `SimulationConfig`.
    - `out`: output directory (created). Rerunning with the same directory skips every finished
      chunk whose fingerprint matches; another config there is refused; a second run on the
      same directory at the same time is refused (lock); a corrupt or stale chunk is
      recomputed with a warning naming it.
    - `progress`: a progress bar with ETA over chunks.
    - `on_chunk`: called with the running count of chunks computed in this call, after each
      chunk is safely on disk (tests use it to simulate a crash).
    - `devices`: the local devices that compute chunks, each whole chunks on its own (default:
      all of `jax.local_devices()`). The numbers do not depend on how many.

    Under `jax.distributed` (after `initialize_distributed`) every process runs this with the
    same config and `out` on a shared file system: each computes the chunks it claims, waits
    for the others' and returns the whole dataset; process 0 writes it. The attributes
    `devices` (per process × processes) and `processes` record who computed this call.

    **Returns:** the assembled `xarray.Dataset`, also written to `out/dataset.nc`. Failed
    solves are masked (NaN, or -1 with `succeeded` False for integer observables); if any
    failed and `solver.allow_failures` is false, `SolveFailures` is raised after writing.
    """
    if config.experiment != "simulation":
        raise ValueError(
            f"`run_sweep` runs simulation configs; {config.name!r} is a {config.experiment!r} "
            "config (use run_experiment)."
        )
    from ._program import chunk_inputs, program

    config = import_fields(config)
    plan = plan_sweep(config)
    numerics = config.numerics()
    commit = git_commit()  # the code this call runs (a later checkout may differ)
    devices = _local_devices(devices)
    processes = jax.process_count()
    programs = {shape: program(config, shape, plan) for shape in plan.shapes}

    compiled: set[Shape] = set()  # shapes whose program this call has launched once
    compiled_lock = threading.Lock()

    def compute(task: ChunkTask, device, bar) -> xr.Dataset:
        shape, chunk = task.key
        started = time.perf_counter()
        inputs = jax.device_put(chunk_inputs(config, plan, shape, chunk), device)
        with compiled_lock:
            first = shape not in compiled
            compiled.add(shape)
        with compile_notice(bar) if first else contextlib.nullcontext():
            outputs = programs[shape](*inputs)
        observed, succeeded, num_steps = jax.device_get(outputs)
        seconds = time.perf_counter() - started
        return _chunk_dataset(plan, shape, chunk, observed, succeeded, num_steps, seconds)

    tasks = [
        ChunkTask(
            (shape, chunk),
            _chunk_name(plan, shape, chunk),
            _chunk_fingerprint(numerics, plan, shape, chunk),
            plan.chunk_count(shape, chunk),
        )
        for shape in plan.shapes
        for chunk in range(plan.num_chunks(shape))
    ]

    def assembled(pieces: dict) -> xr.Dataset:
        dataset = assemble(config, plan, pieces, commit)
        dataset.attrs["devices"] = len(devices) * processes
        dataset.attrs["processes"] = processes
        return dataset

    # The processes of a distributed run share `out`, each writing the chunks it claims.
    return run_chunks(
        config,
        out,
        tasks,
        compute,
        assembled,
        lambda dataset: _failure_message(config, dataset),
        numerics=numerics,
        unit="chunk",
        progress=progress,
        devices=devices,
        process_index=jax.process_index(),
        process_count=processes,
        on_chunk=on_chunk,
    )


def _local_devices(devices: Sequence | None) -> list:
    local = jax.local_devices()
    if devices is None:
        return local
    devices = list(devices)
    foreign = [device for device in devices if device not in local]
    if not devices or foreign:
        raise ValueError(
            f"`devices` must be a non-empty list of this process's devices "
            f"(jax.local_devices() = {local}), got {devices}; pass e.g. "
            "jax.local_devices()[:2], or None for all of them."
        )
    return devices


def _failure_message(config: SimulationConfig, dataset: xr.Dataset) -> str:
    """How many solves failed and why: `max_steps` reached, or an overflow (NaN or inf states
    before the step budget ran out), with the fix of each."""
    failed = ~dataset["succeeded"].values.astype(bool)
    at_budget = dataset["num_steps"].values >= config.solver.max_steps
    exhausted, overflowed = int((failed & at_budget).sum()), int((failed & ~at_budget).sum())
    reasons, fixes = [], []
    if exhausted:
        reasons.append(f"{exhausted} reached solver.max_steps={config.solver.max_steps}")
        fixes.append("raise solver.max_steps or loosen the tolerances")
    if overflowed:
        reasons.append(f"{overflowed} overflowed (NaN or inf states)")
        fixes.append(
            "for the overflow, a smaller solver.dt or tighter tolerances, precision=float64, "
            "or model.params.time_rescaled=true (USA at large beta)"
        )
    return (
        f"{int(failed.sum())} of {dataset.attrs['total_solves']} solves failed: "
        f"{'; '.join(reasons)}. They are masked in the dataset (NaN; -1 with `succeeded` = "
        f"False for counts). Fix: {'; '.join(fixes)}; or set solver.allow_failures=true to "
        "accept a dataset with masked entries."
    )


def _chunk_name(plan: Plan, shape: Shape, chunk: int) -> str:
    # The chunk length is part of the folder name: chunk k of another length holds other
    # combos, so a changed memory budget can never mix them up on resume.
    return str(chunk_path(f"{shape.label}_chunk{plan.chunk_length(shape)}", chunk))


def _chunk_fingerprint(numerics: dict, plan: Plan, shape: Shape, chunk: int) -> str:
    return fingerprint(
        {
            "config": numerics,
            "shape": dataclasses.asdict(shape),
            "chunk": chunk,
            "chunk_length": plan.chunk_length(shape),
        }
    )


def _chunk_dataset(plan, shape, chunk, observed, succeeded, num_steps, seconds) -> xr.Dataset:
    first = chunk * plan.chunk_length(shape)
    count = plan.chunk_count(shape, chunk)
    succeeded = np.asarray(succeeded)[:count].astype(bool)
    variables = {
        "succeeded": (("combo",), succeeded.astype(np.int8)),
        "num_steps": (("combo",), np.asarray(num_steps)[:count].astype(np.int64)),
    }
    for name, values in observed.items():
        entry = OBSERVABLES[name]
        values = np.asarray(values)[:count]
        failed = ~succeeded.reshape((-1,) + (1,) * (values.ndim - 1))
        if np.issubdtype(entry.dtype, np.integer):
            values = np.where(failed, FAILED_INTEGER, np.rint(np.nan_to_num(values)))
        else:
            values = np.where(failed, np.nan, values)
        variables[name] = (("combo", "time", *entry.dims), values.astype(entry.dtype))
    return xr.Dataset(
        variables,
        coords={"combo": np.arange(first, first + count)},
        attrs={"compute_seconds": float(seconds)},
    )


def assemble(config: SimulationConfig, plan: Plan, pieces: dict, commit: str = "unknown"):
    """Gather the chunks into one labelled dataset with dims (n, d[, heads][, layers][,
    placement][, initial], weights, beta, start[, rtol][, *params], time[, particle,
    component]); `placement` and `initial` appear when the config sets other than the default
    post_ln / sphere, `heads` and `layers` when model.heads / model.layers list several."""
    model = config.model
    heads, layers = model.head_counts, model.layer_counts
    outer = (
        len(model.n),
        len(model.d),
        len(heads),
        len(layers),
        len(model.placement),
        len(model.initial),
    )
    full_inner = (
        len(model.weights),
        len(plan.beta),
        len(plan.starts),
        len(plan.tolerances),
        *(len(values) for values in plan.params.values()),
    )
    arrays: dict[str, np.ndarray] = {}
    compute_seconds = 0.0
    for (shape, _), piece in sorted(pieces.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        where = (
            model.n.index(shape.n),
            model.d.index(shape.d),
            heads.index(shape.heads),
            layers.index(shape.layers),
            model.placement.index(shape.placement),
            model.initial.index(shape.initial),
        )
        weight_index = np.array([model.weights.index(w) for w in shape.weights])
        compute_seconds += float(piece.attrs["compute_seconds"])
        w, b, s, r, *p = np.unravel_index(piece["combo"].values, plan.inner_shape(shape))
        for name, variable in piece.data_vars.items():
            if name not in arrays:
                arrays[name] = np.zeros(outer + full_inner + variable.shape[1:], variable.dtype)
            arrays[name][where + (weight_index[w], b, s, r, *p)] = variable.values
    # The tolerance axis is named `rtol` (= atol): `tolerance` is a keyword of xarray's `sel`.
    dims = (
        "n",
        "d",
        "heads",
        "layers",
        "placement",
        "initial",
        "weights",
        "beta",
        "start",
        "rtol",
        *plan.params,
    )
    coords = {
        "n": list(model.n),
        "d": list(model.d),
        "heads": [h or 1 for h in heads],
        "layers": [L or 1 for L in layers],
        "placement": list(model.placement),
        "initial": list(model.initial),
        "weights": list(model.weights),
        "beta": plan.beta,
        "start": plan.starts,
        "rtol": plan.tolerances,
        "time": plan.times,
        **plan.params,
    }
    variables = {}
    for name, values in arrays.items():
        extra = ("time", *OBSERVABLES[name].dims) if name in OBSERVABLES else ()
        if name == "succeeded":
            values = values.astype(bool)
        variables[name] = (dims + extra, values)
    dataset = xr.Dataset(variables, coords=coords)
    # Configs without placements or start kinds keep the dataset layout they always had; one
    # H or L is a scalar coordinate (absent without model.heads / model.layers).
    for axis, values in (("heads", model.heads), ("layers", model.layers)):
        if values is None or len(values) == 1:
            dataset = dataset.isel({axis: 0}, drop=values is None)
    if model.placement == ["post_ln"]:
        dataset = dataset.isel(placement=0, drop=True)
    if model.initial == ["sphere"]:
        dataset = dataset.isel(initial=0, drop=True)
    if not plan.has_tolerance_axis:
        dataset = dataset.isel(rtol=0, drop=True)
    else:
        dataset["rtol"].attrs["long_name"] = "rtol = atol of the adaptive solver"
    dataset["beta"].attrs["long_name"] = "inverse temperature β"
    dataset["time"].attrs["long_name"] = "time t"
    dataset["start"].attrs["long_name"] = "random initial configuration (and weight draw)"
    for name in config.observables.names:
        entry = OBSERVABLES[name]
        text = entry.long_name
        if name in ("clustered_fraction", "cluster_count"):
            text += f", δ={config.observables.delta:g}"
        dataset[name].attrs["long_name"] = text
        if np.issubdtype(entry.dtype, np.integer):
            dataset[name].attrs["failed_value"] = FAILED_INTEGER
    dataset["succeeded"].attrs["long_name"] = "the solve reached t1 (failed solves are masked)"
    failed = int((~dataset["succeeded"]).sum())
    dataset.attrs.update(provenance(config, compute_seconds, commit))
    dataset.attrs["chunk_size"] = max(plan.chunk_length(shape) for shape in plan.shapes)
    dataset.attrs["failed_solves"] = failed
    dataset.attrs["total_solves"] = int(dataset["succeeded"].size)
    return dataset


def load_dataset(out: str | Path) -> tuple[xr.Dataset, object]:
    """The dataset of a finished run in `out` and the config it was made with."""
    from ._yaml import load_yaml

    dataset = RunDirectory(out).read_dataset()
    try:
        raw = load_yaml(str(dataset.attrs["config"]), "its stored config")
    except (KeyError, ValueError) as err:
        raise ConfigError(
            f"{str(out)!r}: its dataset carries no readable config ({err}); rerun it."
        ) from None
    name = raw.get("name") if isinstance(raw, dict) else None
    config = config_from_dict(raw, default_name=name if isinstance(name, str) else "experiment")
    config._smoke_run = bool(dataset.attrs.get("smoke", 0))
    return dataset, config
