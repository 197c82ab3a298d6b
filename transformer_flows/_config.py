"""Typed, validated experiment configs built from YAML (the YAML → object mapping lives here).

A config file describes one experiment: either a `simulation` sweep (particles integrated by
`solve` over a grid of β, random starts, weight ensembles, dimensions) or a `theory` figure
(curves computed from `transformer_flows.theory`). Every error names the key path, the value
and the allowed values. `key.path=value` overrides go through `apply_overrides`, and the
`smoke:` section of a file is a set of such overrides that shrinks it to toy size.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ._overrides import apply_overrides

FIELDS = ("SA", "USA")
SOLVER_METHODS = ("adaptive", "normalized_euler")
# Runge–Kutta schemes of the adaptive method: diffrax class names in lower case. Which one a
# phase diagram can use is measured by experiments/figure3_solver_choice.py (Bosh3 at 1e-2 is
# not accurate enough for Fig. 3 at large d; Tsit5 at 1e-4 is).
ADAPTIVE_SCHEMES = ("tsit5", "bosh3", "dopri5", "dopri8")
_SOLVER_KEYS = ("method", "scheme", "rtol", "atol", "dt", "max_steps")
INITIAL = ("sphere", "hemisphere")
QUERY_KEYS = ("ginibre", "goe")
VALUES = ("identity", "ginibre", "wishart", "qk", "minus_qk")
# Scalar observables are saved per (β, start, time); `positions` saves the whole state.
OBSERVABLES = ("clustered_fraction", "cluster_count", "energy", "order_parameter", "positions")
SIMULATION_FIGURES = ("phase_diagram", "circle_snapshots", "movie", "energy", "cluster_staircase")
THEORY_FIGURES = ("landscape", "regimes")
PRECISIONS = ("float64", "float32")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or not among the allowed values."""


def _fail(path: str, message: str) -> None:
    raise ConfigError(f"config key `{path}`: {message}")


class _Section:
    """Reads one mapping of the YAML, remembering its key path and rejecting unknown keys."""

    def __init__(self, raw: Any, path: str, allowed: Sequence[str]):
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            _fail(
                path or "<top level>", f"must be a mapping with keys {list(allowed)}, got {raw!r}."
            )
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            where = f"{path}.{unknown[0]}" if path else str(unknown[0])
            _fail(where, f"unknown key; allowed keys here: {list(allowed)}.")
        self.raw, self.path = raw, path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is dataclasses.MISSING:
                _fail(self.where(key), "is required.")
            return default
        return value

    def choice(self, key: str, choices: Sequence[str], default: Any = dataclasses.MISSING) -> str:
        value = self.get(key, default)
        if value not in choices:
            _fail(self.where(key), f"must be one of {list(choices)}, got {value!r}.")
        return value

    def integer(self, key: str, default: Any = dataclasses.MISSING, *, low: int = 1) -> int:
        return _integer(self.get(key, default), self.where(key), low)

    def number(
        self,
        key: str,
        default: Any = dataclasses.MISSING,
        *,
        positive: bool = False,
        nonnegative: bool = False,
    ) -> float:
        return _number(self.get(key, default), self.where(key), positive, nonnegative)

    def section(self, key: str, allowed: Sequence[str]) -> "_Section":
        return _Section(self.raw.get(key), self.where(key), allowed)


def _integer(value: Any, path: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        _fail(path, f"must be an integer >= {low}, got {value!r}.")
    return int(value)


def _number(value: Any, path: str, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string.
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        _fail(path, f"must be a number, got {value!r}.")
    value = float(value)
    if not np.isfinite(value):
        _fail(path, f"must be finite, got {value!r}.")
    if positive and not value > 0:
        _fail(path, f"must be > 0, got {value!r}.")
    if nonnegative and value < 0:
        _fail(path, f"must be >= 0, got {value!r}.")
    return value


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _grid(value: Any, path: str, *, nonnegative: bool = False) -> tuple[float, ...]:
    """A list of numbers, one number, or {start, stop, num} (inclusive linspace)."""
    if isinstance(value, Mapping):
        section = _Section(value, path, ("start", "stop", "num"))
        start = section.number("start", nonnegative=nonnegative)
        stop = section.number("stop", nonnegative=nonnegative)
        num = section.integer("num")
        if num > 1 and not stop > start:
            _fail(f"{path}.stop", f"must be > start={start} when num > 1, got {stop}.")
        return tuple(float(v) for v in np.linspace(start, stop, num))
    values = _as_list(value)
    if not values:
        _fail(path, "must hold at least one value.")
    return tuple(_number(v, f"{path}[{i}]", nonnegative=nonnegative) for i, v in enumerate(values))


@dataclasses.dataclass(frozen=True)
class Weights:
    """One weight ensemble: "identity" (Q = K = V = I) or a Fig. 5 ensemble "query_key:value"."""

    query_key: str | None
    value: str | None

    @property
    def label(self) -> str:
        return "identity" if self.query_key is None else f"{self.query_key}:{self.value}"

    @classmethod
    def parse(cls, text: Any, path: str) -> "Weights":
        allowed = ["identity"] + [f"{q}:{v}" for q in QUERY_KEYS for v in VALUES]
        if text == "identity":
            return cls(None, None)
        query_key, _, value = str(text).partition(":")
        if query_key not in QUERY_KEYS or value not in VALUES:
            _fail(path, f"must be one of {allowed}, got {text!r}.")
        return cls(query_key, value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    field: str
    n: tuple[int, ...]
    d: tuple[int, ...]
    weights: tuple[Weights, ...]
    initial: str


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    beta: tuple[float, ...]
    starts: int
    seed: int
    tolerance: tuple[float, ...] | None
    chunk_size: int | None
    memory_budget_mb: float


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    method: str
    scheme: str | None
    rtol: float
    atol: float
    dt: float
    max_steps: int

    def describe(self) -> str:
        if self.method == "adaptive":
            return (
                f"Renormalized({self.scheme.capitalize()}) adaptive PID, "
                f"rtol={self.rtol:g}, atol={self.atol:g}"
            )
        return f"NormalizedEuler fixed step dt={self.dt:g} (the authors' scheme)"


@dataclasses.dataclass(frozen=True)
class ObservablesConfig:
    names: tuple[str, ...]
    delta: float
    harmonic: int


@dataclasses.dataclass(frozen=True)
class TheoryConfig:
    n: int
    d: tuple[int, ...]
    delta: float
    beta: tuple[float, ...]
    tau: tuple[float, ...]
    t1: float


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated experiment. `raw` is the resolved mapping (defaults filled in) that is
    saved with the output, so a run can be reproduced from its dataset alone."""

    name: str
    description: str
    experiment: str
    precision: str
    figures: tuple[str, ...]
    plot: dict
    raw: dict
    # Simulation sections, or the theory section: the other kind's stay None.
    model: ModelConfig | None = None
    sweep: SweepConfig | None = None
    times: tuple[float, ...] | None = None
    solver: SolverConfig | None = None
    observables: ObservablesConfig | None = None
    theory: TheoryConfig | None = None
    smoke: bool = False

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


_TOP = (
    "name",
    "description",
    "experiment",
    "precision",
    "figures",
    "plot",
    "model",
    "sweep",
    "time",
    "solver",
    "observables",
    "theory",
    "smoke",
)
_PLOT = ("snapshot_times", "movie_frames", "max_panels_per_row", "example_start")


def load_config(path: str | Path, overrides: Sequence[str] = (), *, smoke: bool = False) -> Config:
    """Read a YAML config, apply its `smoke:` overrides (if `smoke`) then `overrides`, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    return config_from_dict(raw, overrides, smoke=smoke, default_name=path.stem)


def config_from_dict(
    raw: Any,
    overrides: Sequence[str] = (),
    *,
    smoke: bool = False,
    default_name: str = "experiment",
) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a YAML mapping at the top level, got {raw!r}.")
    raw = dict(raw)
    smoke_overrides = raw.pop("smoke", None) or {}
    if not isinstance(smoke_overrides, Mapping):
        _fail(
            "smoke",
            f"must map key paths to values, e.g. {{sweep.starts: 4}}, got {smoke_overrides!r}.",
        )
    if smoke:
        raw = _fill_sections(raw)
        raw = apply_overrides(
            raw, [f"{key}={json.dumps(value)}" for key, value in smoke_overrides.items()]
        )
    raw = apply_overrides(_fill_sections(raw), list(overrides))
    config = _validate(raw, default_name)
    if smoke_overrides:
        config.raw["smoke"] = _plain(dict(smoke_overrides))
    return dataclasses.replace(config, smoke=bool(smoke))


def _fill_sections(raw: dict) -> dict:
    """Give every optional section its keys (value None = default) so overrides can reach
    them; unknown keys inside are still rejected by validation."""
    raw = dict(raw)
    for key in ("name", "description", "experiment", "precision", "figures"):
        raw.setdefault(key, None)
    experiment = raw.get("experiment") or "simulation"
    sections = {"plot": _PLOT}
    if experiment == "simulation":
        sections.update(
            model=("field", "n", "d", "weights", "initial"),
            sweep=("beta", "starts", "seed", "tolerance", "chunk_size", "memory_budget_mb"),
            time=("t1", "num"),
            solver=_SOLVER_KEYS,
            observables=("names", "delta", "harmonic"),
        )
    else:
        sections.update(theory=("n", "d", "delta", "beta", "tau", "t1"))
    for name, keys in sections.items():
        section = raw.get(name)
        if section is None:
            section = {}
        if isinstance(section, Mapping):
            raw[name] = {key: section.get(key) for key in keys} | dict(section)
    return raw


def _validate(raw: dict, default_name: str) -> Config:
    top = _Section(raw, "", _TOP)
    name = str(top.get("name", default_name))
    description = str(top.get("description", ""))
    experiment = top.choice("experiment", ("simulation", "theory"), "simulation")
    precision = top.choice("precision", PRECISIONS, "float64")
    allowed_figures = SIMULATION_FIGURES if experiment == "simulation" else THEORY_FIGURES
    figures = tuple(_as_list(top.get("figures", [])))
    for i, figure in enumerate(figures):
        if figure not in allowed_figures:
            _fail(
                f"figures[{i}]",
                f"must be one of {list(allowed_figures)} for a {experiment} "
                f"experiment, got {figure!r}.",
            )
    plot = _validate_plot(top.section("plot", _PLOT))
    common = dict(
        name=name,
        description=description,
        experiment=experiment,
        precision=precision,
        figures=figures,
        plot=plot,
    )
    # The mapping saved with the output: the same fields, as plain YAML values.
    resolved: dict = {**common, "figures": list(figures)}
    if experiment == "theory":
        theory = _validate_theory(top.section("theory", ("n", "d", "delta", "beta", "tau", "t1")))
        resolved["theory"] = dataclasses.asdict(theory)
        return Config(**common, theory=theory, raw=_plain(resolved))

    model = _validate_model(top.section("model", ("field", "n", "d", "weights", "initial")))
    sweep = _validate_sweep(
        top.section(
            "sweep", ("beta", "starts", "seed", "tolerance", "chunk_size", "memory_budget_mb")
        )
    )
    time = top.section("time", ("t1", "num"))
    t1 = time.number("t1", positive=True)
    num = time.integer("num", low=2)
    times = tuple(float(t) for t in np.linspace(0.0, t1, num))
    solver = _validate_solver(top.section("solver", _SOLVER_KEYS))
    observables = _validate_observables(top.section("observables", ("names", "delta", "harmonic")))
    _cross_checks(model, sweep, solver, observables, figures, t1)
    resolved.update(
        model={
            "field": model.field,
            "n": list(model.n),
            "d": list(model.d),
            "weights": [w.label for w in model.weights],
            "initial": model.initial,
        },
        sweep=dataclasses.asdict(sweep),
        time={"t1": t1, "num": num},
        solver=dataclasses.asdict(solver),
        observables=dataclasses.asdict(observables),
    )
    return Config(
        **common,
        model=model,
        sweep=sweep,
        times=times,
        solver=solver,
        observables=observables,
        raw=_plain(resolved),
    )


def _validate_plot(section: _Section) -> dict:
    snapshot_times = section.get("snapshot_times", None)
    if snapshot_times is not None:
        snapshot_times = list(
            _grid(snapshot_times, section.where("snapshot_times"), nonnegative=True)
        )
    return {
        "snapshot_times": snapshot_times,
        "movie_frames": section.integer("movie_frames", 60),
        "max_panels_per_row": section.integer("max_panels_per_row", 3),
        "example_start": section.integer("example_start", 0, low=0),
    }


def _validate_model(section: _Section) -> ModelConfig:
    field = section.choice("field", FIELDS, "SA")
    n = tuple(
        _integer(v, f"{section.where('n')}[{i}]", 2)
        for i, v in enumerate(_as_list(section.get("n")))
    )
    d = tuple(
        _integer(v, f"{section.where('d')}[{i}]", 2)
        for i, v in enumerate(_as_list(section.get("d")))
    )
    weights = tuple(
        Weights.parse(w, f"{section.where('weights')}[{i}]")
        for i, w in enumerate(_as_list(section.get("weights", "identity")))
    )
    initial = section.choice("initial", INITIAL, "sphere")
    for axis, values in (("n", n), ("d", d), ("weights", [w.label for w in weights])):
        if len(set(values)) != len(values):
            _fail(section.where(axis), f"has repeated values {list(values)}; list each once.")
    if field == "USA" and any(w.value not in (None, "identity") for w in weights):
        _fail(
            section.where("weights"),
            "USA is defined with V = I here (docs/mathematics.md §M3); use a "
            "`query_key:identity` ensemble or field SA.",
        )
    return ModelConfig(field, n, d, weights, initial)


def _validate_sweep(section: _Section) -> SweepConfig:
    beta = _grid(section.get("beta"), section.where("beta"), nonnegative=True)
    if len(set(beta)) != len(beta):
        _fail(section.where("beta"), f"has repeated values {list(beta)}.")
    tolerance = section.get("tolerance", None)
    if tolerance is not None:
        tolerance = tuple(
            _number(v, f"{section.where('tolerance')}[{i}]", positive=True)
            for i, v in enumerate(_as_list(tolerance))
        )
    chunk_size = section.get("chunk_size", "auto")
    chunk_size = (
        None if chunk_size == "auto" else _integer(chunk_size, section.where("chunk_size"), 1)
    )
    return SweepConfig(
        beta=beta,
        starts=section.integer("starts"),
        seed=section.integer("seed", 0, low=0),
        tolerance=tolerance,
        chunk_size=chunk_size,
        memory_budget_mb=section.number("memory_budget_mb", 256.0, positive=True),
    )


def _validate_solver(section: _Section) -> SolverConfig:
    method = section.choice("method", SOLVER_METHODS, "adaptive")
    scheme = section.get("scheme", None)
    if method == "adaptive":
        scheme = section.choice("scheme", ADAPTIVE_SCHEMES, "tsit5")
    elif scheme is not None:
        _fail(
            section.where("scheme"),
            f"chooses the Runge–Kutta scheme of method 'adaptive'; method {method!r} has its "
            f"own update. Remove it (override: solver.scheme=null; got {scheme!r}) "
            "or set method=adaptive.",
        )
    return SolverConfig(
        method=method,
        scheme=scheme,
        rtol=section.number("rtol", 1e-6, positive=True),
        atol=section.number("atol", 1e-6, positive=True),
        dt=section.number("dt", 0.1, positive=True),
        max_steps=section.integer("max_steps", 16_384),
    )


def _validate_observables(section: _Section) -> ObservablesConfig:
    names = tuple(_as_list(section.get("names", ["clustered_fraction"])))
    for i, name in enumerate(names):
        if name not in OBSERVABLES:
            _fail(
                f"{section.where('names')}[{i}]",
                f"must be one of {list(OBSERVABLES)}, got {name!r}.",
            )
    if len(set(names)) != len(names):
        _fail(section.where("names"), f"has repeated values {list(names)}.")
    delta = section.number("delta", 1e-3, positive=True)
    if not delta < 2:
        _fail(
            section.where("delta"), f"must be < 2 (pairs with <x_i,x_j> >= 1 - delta), got {delta}."
        )
    return ObservablesConfig(names, delta, section.integer("harmonic", 1))


_FIGURE_NEEDS = {
    "phase_diagram": ("clustered_fraction",),
    "circle_snapshots": ("positions",),
    "movie": ("positions",),
    "energy": ("energy",),
    "cluster_staircase": ("cluster_count",),
}


def _cross_checks(model, sweep, solver, observables, figures, t1) -> None:
    for figure in figures:
        for needed in _FIGURE_NEEDS[figure]:
            if needed not in observables.names:
                _fail(
                    "observables.names",
                    f"figure {figure!r} needs observable {needed!r}; "
                    f"add it to {list(observables.names)}.",
                )
    if "positions" in observables.names and (len(model.n) > 1 or len(model.d) > 1):
        _fail(
            "observables.names",
            "`positions` stores whole states, whose shape changes with n "
            "and d: use a single `model.n` and `model.d` with it.",
        )
    if "circle_snapshots" in figures and model.d != (2,):
        _fail(
            "figures",
            "'circle_snapshots' draws points on the circle: needs model.d = 2, got "
            f"{list(model.d)}.",
        )
    if "movie" in figures and model.d != (3,):
        _fail("figures", f"'movie' draws points on S^2: needs model.d = 3, got {list(model.d)}.")
    if "order_parameter" in observables.names and model.d != (2,):
        _fail(
            "observables.names",
            "`order_parameter` is defined for angles on the circle: needs model.d = 2.",
        )
    if sweep.tolerance is not None and solver.method != "adaptive":
        _fail(
            "sweep.tolerance",
            "a tolerance axis needs solver.method = 'adaptive' "
            f"(got {solver.method!r}); set sweep.tolerance = null.",
        )
    if solver.method == "normalized_euler" and t1 / solver.dt > solver.max_steps:
        _fail(
            "solver.max_steps",
            f"the fixed step dt={solver.dt} needs {int(np.ceil(t1 / solver.dt))} "
            f"steps to reach t1={t1}; raise it above {solver.max_steps}.",
        )


def _validate_theory(section: _Section) -> TheoryConfig:
    n = section.integer("n", 32, low=2)
    d = tuple(
        _integer(v, f"{section.where('d')}[{i}]", 2)
        for i, v in enumerate(_as_list(section.get("d", 2)))
    )
    beta = _grid(
        section.get("beta", {"start": 0.0, "stop": 9.0, "num": 91}),
        section.where("beta"),
        nonnegative=True,
    )
    tau = _grid(
        section.get("tau", {"start": -3.14159, "stop": 3.14159, "num": 801}), section.where("tau")
    )
    return TheoryConfig(
        n,
        d,
        section.number("delta", 1e-3, positive=True),
        beta,
        tau,
        section.number("t1", 30.0, positive=True),
    )


def _plain(value: Any) -> Any:
    """Tuples → lists, numpy scalars → Python, so the resolved config dumps as plain YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
