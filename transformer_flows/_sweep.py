"""Config-driven sweeps: one compiled, vmapped program per shape, chunked, resumable output.

Layout of an output directory DIR:
- `DIR/config.yaml`: the resolved config of the run (a re-run must match it to resume);
- `DIR/chunks/<n,d,weights>/chunk_#####.nc`: one netCDF file per finished chunk, written to
  a temporary name and renamed, so a killed run never leaves a half-written chunk;
- `DIR/dataset.nc`: the assembled labelled `xarray.Dataset`, written once all chunks exist.

Axes of equal shape (β, random starts — each start also draws its own weight matrices —
and solver tolerances) are flattened and run through ONE `jax.vmap`-ed, jitted call of `solve`
per chunk; the last chunk is padded so it reuses the same compiled program. Axes that change
array shapes (n, d, weight ensemble) run one program each. Trajectories are never stored:
`solve(..., observe=...)` saves only the requested observables at the save times.

Storage: netCDF-4 through h5netcdf (HDF5 via h5py). It is pip-installable with wheels, keeps
one self-contained file per chunk (so a chunk is committed by one atomic rename; a zarr store
is a directory of many files), stores int64/float64/strings natively (the scipy netCDF-3
writer does not), and any netCDF tool can read the result.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ._config import ADAPTIVE_SCHEMES, Config, ConfigError, Weights, config_from_dict
from ._energy import energy
from ._ensembles import random_weights
from ._field._self_attention import SelfAttention, UnnormalizedSelfAttention
from ._initial import sample_hemisphere, sample_sphere
from ._solve import solve
from ._span import solve_in_span
from ._sphere import normalize
from ._solver._fixed_step import NormalizedEuler

ENGINE = "h5netcdf"
DATASET_FILE = "dataset.nc"
CONFIG_FILE = "config.yaml"
_CHUNK_FILE = "chunk_{:05d}.nc"
# Cap of automatic chunks: keeps the progress bar and the resume granularity useful (and a
# vmapped adaptive solve waits for its slowest member, so huge chunks gain little).
_MAX_AUTO_CHUNK = 2048
# Config parts that do not change the numbers: a re-run may change them and still resume.
_PRESENTATION_KEYS = ("description", "figures", "plot", "smoke")


def _observable_functions() -> dict[str, Callable]:
    """name -> f(x, observer) -> array. Resolved at call time from the package namespace."""
    import transformer_flows as tf

    return {
        "clustered_fraction": lambda x, o: tf.clustered_fraction(x, o.delta),
        "cluster_count": lambda x, o: tf.count_clusters(x, o.delta),
        "energy": lambda x, o: energy(x, o.beta),
        "order_parameter": lambda x, o: tf.order_parameter(x, k=o.harmonic),
        "positions": lambda x, o: x,
    }


# Functions of the Gram matrix only: unchanged by an orthonormal change of coordinates.
INNER_PRODUCT_OBSERVABLES = ("clustered_fraction", "cluster_count", "energy")

# Storage dtype and trailing dims of each observable. The clustered fraction is a multiple of
# 1/(n(n-1)), exact enough in float32, which halves the size of the large phase-diagram sweeps.
_STORAGE = {
    "clustered_fraction": (np.float32, ()),
    "cluster_count": (np.int16, ()),
    "energy": (np.float64, ()),
    "order_parameter": (np.float64, ()),
    "positions": (np.float64, ("particle", "component")),
}


class Observer(eqx.Module):
    """The `observe=` callback of one solve: the configured observables of a state x.

    β is a leaf (it is vmapped over), the rest is static.
    """

    beta: jax.Array
    names: tuple[str, ...] = eqx.field(static=True)
    delta: float = eqx.field(static=True)
    harmonic: int = eqx.field(static=True)

    def __call__(self, x):
        functions = _observable_functions()
        # `solve` saves integer observables (cluster counts) through float buffers itself.
        return {name: functions[name](x, self) for name in self.names}


@dataclasses.dataclass(frozen=True)
class Shape:
    """One compiled program: a fixed (n, d) and a group of weight ensembles. Q = K = V = I
    runs alone (no matrices at all); the random ensembles of one d share a program, their
    draws chosen per element by `lax.switch`, so the ensemble is one more vmapped axis."""

    n: int
    d: int
    weights: tuple[Weights, ...]

    @property
    def random(self) -> bool:
        return self.weights[0].query_key is not None

    @property
    def label(self) -> str:
        names = "+".join(w.label.replace(":", "-") for w in self.weights)
        return f"n{self.n}_d{self.d}_{names}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a simulation config is cut into programs and chunks. Within a program the combos
    (weights, β, start, tolerance) are flattened in that order and cut into chunks."""

    shapes: tuple[Shape, ...]
    beta: np.ndarray
    starts: np.ndarray
    tolerances: np.ndarray  # (R,): rtol = atol per tolerance-axis entry (rtol if no axis)
    has_tolerance_axis: bool
    times: np.ndarray
    chunk_sizes: tuple[int, ...]  # combos per call, one per shape (the memory need grows with d)

    def inner_shape(self, shape: Shape) -> tuple[int, int, int, int]:
        return len(shape.weights), len(self.beta), len(self.starts), len(self.tolerances)

    def num_combos(self, shape: Shape) -> int:
        return int(np.prod(self.inner_shape(shape)))

    def chunk_length(self, shape: Shape) -> int:
        """Combos per call of this shape's program (never more than it has)."""
        return min(self.chunk_sizes[self.shapes.index(shape)], self.num_combos(shape))

    def num_chunks(self, shape: Shape) -> int:
        return -(-self.num_combos(shape) // self.chunk_length(shape))


def plan_sweep(config: Config) -> Plan:
    model, sweep, solver = config.model, config.sweep, config.solver
    identity = tuple(w for w in model.weights if w.query_key is None)
    random = tuple(w for w in model.weights if w.query_key is not None)
    groups = [group for group in (identity, random) if group]
    shapes = tuple(Shape(n, d, group) for n in model.n for d in model.d for group in groups)
    tolerances = np.array(sweep.tolerance or [solver.rtol])
    times = np.asarray(config.times)
    chunk_sizes = tuple(
        sweep.chunk_size or _auto_chunk_size(config, shape, len(times)) for shape in shapes
    )
    return Plan(
        shapes,
        np.asarray(sweep.beta),
        np.arange(sweep.starts),
        tolerances,
        sweep.tolerance is not None,
        times,
        chunk_sizes,
    )


def _auto_chunk_size(config: Config, shape: Shape, num_times: int) -> int:
    """Combos per call so that saved outputs plus solver work arrays fit the memory budget."""
    n, d = shape.n, shape.d
    saved = sum(n * d if name == "positions" else 1 for name in config.observables.names)
    # Tsit5 keeps ~10 stage copies of the state, attention a few n×n arrays; random
    # ensembles hold Q, K, V and the draws of every ensemble (lax.switch under vmap).
    matrices = 4 * (len(shape.weights) + 3) * d * d if shape.random else 0
    per_combo = 8 * (num_times * saved + 16 * n * d + 8 * n * n) + 8 * matrices
    fits = int(config.sweep.memory_budget_mb * 2**20 // per_combo)
    return max(1, min(fits, _MAX_AUTO_CHUNK))


def _dtype(config: Config):
    if config.precision == "float64":
        if not jax.config.jax_enable_x64:
            raise ConfigError(
                "config key `precision`: 'float64' needs JAX's 64-bit mode; call "
                "jax.config.update('jax_enable_x64', True) first (the CLI does) or set "
                "precision=float32."
            )
        return jnp.float64
    return jnp.float32


# Starts and weights are drawn in float32 whatever the precision, so that a float32 and a float64
# run of one config integrate the same systems and differ by precision only.
_DRAW_DTYPE = jnp.float32

# Config names are diffrax class names in lower case; `solve` wraps each in `Renormalized`.
_ADAPTIVE_SCHEMES = {name: getattr(diffrax, name.capitalize()) for name in ADAPTIVE_SCHEMES}

_PROGRAM_CACHE: dict = {}


def _program(config: Config, shape: Shape, plan: Plan):
    """The jitted, vmapped solve of one chunk of (β, start, tolerance) combos (cached, so
    resuming in the same process does not compile again)."""
    cache_key = (
        json.dumps(_numerics(config.raw), sort_keys=True),
        shape,
        plan.chunk_length(shape),
        jax.config.jax_enable_x64,
    )
    if cache_key not in _PROGRAM_CACHE:
        if len(_PROGRAM_CACHE) >= 4:
            _PROGRAM_CACHE.pop(next(iter(_PROGRAM_CACHE)))
        _PROGRAM_CACHE[cache_key] = _build_program(config, shape, plan)
    return _PROGRAM_CACHE[cache_key]


def _build_program(config: Config, shape: Shape, plan: Plan):
    dtype = _dtype(config)
    solver_config, observables = config.solver, config.observables
    ts = jnp.asarray(plan.times, dtype=dtype)
    base_key = jax.random.key(config.sweep.seed)
    field_class = SelfAttention if config.model.field == "SA" else UnnormalizedSelfAttention
    sample = sample_sphere if config.model.initial == "sphere" else sample_hemisphere
    if solver_config.method == "adaptive":
        solver, dt0 = _ADAPTIVE_SCHEMES[solver_config.scheme](), None
    else:
        solver, dt0 = NormalizedEuler(), solver_config.dt

    tolerance_axis = plan.has_tolerance_axis
    rtol, atol = solver_config.rtol, solver_config.atol

    def controller(tolerance):
        # `solve` takes rtol/atol as Python floats; a vmapped tolerance axis goes in through
        # its own PID controller, with the coefficients of `solve`'s default one.
        if not tolerance_axis:
            return None
        return diffrax.PIDController(rtol=tolerance, atol=tolerance, pcoeff=0.3, icoeff=0.4)

    def draw(weights: Weights):
        def weights_of(key):
            Q, K, V = random_weights(
                key, shape.d, query_key=weights.query_key, value=weights.value, dtype=_DRAW_DTYPE
            )
            V = jnp.eye(shape.d) if V is None else V
            return Q.astype(dtype), K.astype(dtype), V.astype(dtype)

        return weights_of

    draws = [draw(weights) for weights in shape.weights]

    # Identity weights keep span{x_i(0)}: for d > n solve in that n-dimensional span (exact,
    # and d = 1024 then costs what d = n costs). Inner-product observables need no map back.
    if not shape.random and shape.d > shape.n:
        integrate = functools.partial(
            solve_in_span,
            observe_in_span=set(observables.names) <= set(INNER_PRODUCT_OBSERVABLES),
        )
    else:
        integrate = solve

    def one(ensemble, beta, start, tolerance):
        # Start s uses the same initial tokens (and weight key) for every β and ensemble:
        # common random numbers make the phase diagram smooth in β.
        init_key, weight_key = jax.random.split(jax.random.fold_in(base_key, start))
        x0 = normalize(sample(init_key, shape.n, shape.d, dtype=_DRAW_DTYPE).astype(dtype))
        if shape.random:
            Q, K, V = jax.lax.switch(ensemble, draws, weight_key)
            # <Qx_i, Kx_j> = <(KᵀQ)x_i, x_j>: one query matrix and identity keys give the same
            # logits with one n×d×d product per field evaluation fewer.
            Q, K = K.T @ Q, None
        else:
            Q = K = V = None
        field = field_class(beta, Q, K, V)
        observer = Observer(beta, observables.names, observables.delta, observables.harmonic)
        trajectory = integrate(
            field,
            x0,
            ts,
            solver=solver,
            dt0=dt0,
            rtol=rtol,
            atol=atol,
            max_steps=solver_config.max_steps,
            observe=observer,
            throw=False,
            stepsize_controller=controller(tolerance),
        )
        return trajectory.observed, trajectory.succeeded, trajectory.stats["num_steps"]

    return eqx.filter_jit(jax.vmap(one))


def _versions() -> dict[str, str]:
    names = (
        "transformer-flows",
        "jax",
        "jaxlib",
        "diffrax",
        "equinox",
        "numpy",
        "xarray",
        "h5netcdf",
        "h5py",
    )
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the package's checkout, with '+dirty' for uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _numerics(raw: dict) -> dict:
    return {key: value for key, value in raw.items() if key not in _PRESENTATION_KEYS}


def _claim_directory(config: Config, out: Path) -> None:
    """Create `out`, or check that it holds a run of the same numerics before resuming."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    if path.exists():
        previous = config_from_dict(_load_yaml(path))
        if _numerics(previous.raw) != _numerics(config.raw):
            raise ConfigError(
                f"--out {str(out)!r} holds a run of a different config ({path}); resuming "
                "would mix results. Use a new --out directory, or delete that one."
            )
    _atomic_write_text(path, config.to_yaml())


def _load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _atomic_to_netcdf(dataset: xr.Dataset, path: Path) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    dataset.to_netcdf(temporary, engine=ENGINE)
    os.replace(temporary, path)


def _chunk_dataset(
    plan: Plan, shape: Shape, chunk: int, observed, succeeded, num_steps, seconds
) -> xr.Dataset:
    first = chunk * plan.chunk_length(shape)
    count = min(plan.chunk_length(shape), plan.num_combos(shape) - first)
    variables = {
        "succeeded": (("combo",), np.asarray(succeeded)[:count].astype(np.int8)),
        "num_steps": (("combo",), np.asarray(num_steps)[:count].astype(np.int64)),
    }
    for name, values in observed.items():
        dtype, extra = _STORAGE[name]
        values = np.asarray(values)[:count]
        if np.issubdtype(dtype, np.integer):
            values = np.rint(values)
        variables[name] = (("combo", "time", *extra), values.astype(dtype))
    return xr.Dataset(
        variables,
        coords={"combo": np.arange(first, first + count)},
        attrs={"compute_seconds": float(seconds)},
    )


def _chunk_inputs(plan: Plan, shape: Shape, chunk: int, dtype):
    first = chunk * plan.chunk_length(shape)
    index = np.arange(first, first + plan.chunk_length(shape))
    # Pad the last chunk so every call has the compiled shape.
    index = np.minimum(index, plan.num_combos(shape) - 1)
    w, b, s, r = np.unravel_index(index, plan.inner_shape(shape))
    return (
        jnp.asarray(w),
        jnp.asarray(plan.beta[b], dtype=dtype),
        jnp.asarray(plan.starts[s]),
        jnp.asarray(plan.tolerances[r], dtype=dtype),
    )


def run_experiment(
    config: Config,
    out: str | Path,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Run a config into directory `out` and return its dataset (see `run_sweep`)."""
    if config.experiment == "theory":
        from ._theory_data import theory_dataset

        out = Path(out)
        _claim_directory(config, out)
        start_time = time.perf_counter()
        dataset = theory_dataset(config)
        dataset.attrs.update(_provenance(config, time.perf_counter() - start_time, git_commit()))
        _atomic_to_netcdf(dataset, out / DATASET_FILE)
        return dataset
    return run_sweep(config, out, progress=progress, on_chunk=on_chunk)


def run_sweep(
    config: Config,
    out: str | Path,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Run a simulation sweep, chunk by chunk, into `out`; resume from chunks already there.

    **Arguments:**
    - `config`: a validated simulation `Config`.
    - `out`: output directory (created). Re-running with the same directory skips every
      finished chunk; a different config there is refused.
    - `progress`: show a progress bar with ETA over chunks.
    - `on_chunk`: called with the running count of chunks computed in this call, after each
      chunk is safely on disk (hooks for logging; tests use it to simulate a crash).

    **Returns:** the assembled `xarray.Dataset`, also written to `out/dataset.nc`.
    """
    if config.experiment != "simulation":
        raise ValueError(
            f"`run_sweep` runs simulation configs; {config.name!r} is a "
            f"{config.experiment!r} config (use run_experiment)."
        )
    out = Path(out)
    dtype = _dtype(config)
    plan = plan_sweep(config)
    commit = git_commit()  # the code this call runs (a later checkout may differ)
    _claim_directory(config, out)
    for stale in out.glob("chunks/*/*.tmp*"):
        stale.unlink()  # left by a run killed while writing; that chunk is recomputed
    todo = [
        (shape, chunk)
        for shape in plan.shapes
        for chunk in range(plan.num_chunks(shape))
        if not _chunk_path(out, plan, shape, chunk).exists()
    ]
    total = sum(plan.num_chunks(shape) for shape in plan.shapes)
    computed = 0
    with tqdm(
        total=total,
        initial=total - len(todo),
        unit="chunk",
        disable=not progress,
        desc=config.name,
        dynamic_ncols=True,
    ) as bar:
        for shape, chunk in todo:
            start_time = time.perf_counter()
            program = _program(config, shape, plan)
            observed, succeeded, num_steps = program(*_chunk_inputs(plan, shape, chunk, dtype))
            observed = jax.device_get(observed)
            seconds = time.perf_counter() - start_time
            path = _chunk_path(out, plan, shape, chunk)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_to_netcdf(
                _chunk_dataset(plan, shape, chunk, observed, succeeded, num_steps, seconds), path
            )
            computed += 1
            bar.update(1)
            if on_chunk is not None:
                on_chunk(computed)
    dataset = assemble(config, plan, out, commit)
    _atomic_to_netcdf(dataset, out / DATASET_FILE)
    return dataset


def _chunk_path(out: Path, plan: Plan, shape: Shape, chunk: int) -> Path:
    # The chunk length is part of the folder name: chunk k of another length holds other
    # combos, so a changed memory budget can never mix them up on resume.
    folder = f"{shape.label}_chunk{plan.chunk_length(shape)}"
    return out / "chunks" / folder / _CHUNK_FILE.format(chunk)


def assemble(config: Config, plan: Plan, out: Path, commit: str = "unknown") -> xr.Dataset:
    """Gather every chunk file into one labelled dataset with dims
    (n, d, weights, beta, start[, rtol], time[, particle, component])."""
    model = config.model
    outer = (len(model.n), len(model.d))
    full_inner = (len(model.weights), len(plan.beta), len(plan.starts), len(plan.tolerances))
    arrays: dict[str, np.ndarray] = {}
    compute_seconds = 0.0
    for shape in plan.shapes:
        where = (model.n.index(shape.n), model.d.index(shape.d))
        weight_index = np.array([model.weights.index(w) for w in shape.weights])
        for chunk in range(plan.num_chunks(shape)):
            with xr.open_dataset(_chunk_path(out, plan, shape, chunk), engine=ENGINE) as piece:
                piece = piece.load()
            compute_seconds += float(piece.attrs["compute_seconds"])
            w, b, s, r = np.unravel_index(piece["combo"].values, plan.inner_shape(shape))
            for name, variable in piece.data_vars.items():
                if name not in arrays:
                    arrays[name] = np.zeros(outer + full_inner + variable.shape[1:], variable.dtype)
                arrays[name][where + (weight_index[w], b, s, r)] = variable.values
    # The tolerance axis is named `rtol` (= atol): `tolerance` is a keyword of xarray's `sel`.
    dims = ("n", "d", "weights", "beta", "start", "rtol")
    coords = {
        "n": list(model.n),
        "d": list(model.d),
        "weights": [w.label for w in model.weights],
        "beta": plan.beta,
        "start": plan.starts,
        "rtol": plan.tolerances,
        "time": plan.times,
    }
    variables = {}
    for name, values in arrays.items():
        extra = ("time", *_STORAGE[name][1]) if name in _STORAGE else ()
        if name == "succeeded":
            values = values.astype(bool)
        variables[name] = (dims + extra, values)
    dataset = xr.Dataset(variables, coords=coords)
    if not plan.has_tolerance_axis:
        dataset = dataset.isel(rtol=0, drop=True)
    else:
        dataset["rtol"].attrs["long_name"] = "rtol = atol of the adaptive solver"
    dataset["beta"].attrs["long_name"] = "inverse temperature β"
    dataset["time"].attrs["long_name"] = "time t"
    dataset["start"].attrs["long_name"] = "random initial configuration (and weight draw)"
    if "clustered_fraction" in dataset:
        dataset["clustered_fraction"].attrs["long_name"] = (
            "fraction of ordered pairs i≠j with <x_i,x_j> >= 1-δ, "
            f"δ={config.observables.delta:g}"
        )
    dataset.attrs.update(_provenance(config, compute_seconds, commit))
    dataset.attrs["chunk_size"] = max(plan.chunk_length(shape) for shape in plan.shapes)
    return dataset


def _provenance(config: Config, compute_seconds: float, commit: str) -> dict:
    attrs = {
        "name": config.name,
        "config": config.to_yaml(),
        "smoke": int(config.smoke),
        "versions": json.dumps(_versions()),
        "git_commit": commit,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "compute_seconds": compute_seconds,
    }
    if config.solver is not None:
        attrs["solver"] = f"{config.solver.describe()}, {config.precision}"
    return attrs


def load_dataset(out: str | Path) -> tuple[xr.Dataset, Config]:
    """The dataset of a finished run in `out` and the config it was made with."""
    path = Path(out) / DATASET_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: the run in {str(out)!r} has not finished. Re-run "
            "`transformer-flows run CONFIG --out DIR` with the same DIR to resume it."
        )
    with xr.open_dataset(path, engine=ENGINE) as dataset:
        dataset = dataset.load()
    import yaml

    raw = yaml.safe_load(dataset.attrs["config"])
    config = config_from_dict(raw, default_name=raw.get("name", "experiment"))
    return dataset, dataclasses.replace(config, smoke=bool(dataset.attrs.get("smoke", 0)))
