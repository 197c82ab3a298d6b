"""The config schema, declared once: pydantic models of the three experiment kinds
(`simulation` sweeps, `theory` figures, `fit`), sharing one vocabulary for models, solvers,
precision and observables.

Defaults, validation, the saved (resolved) config, the fingerprint of a run and
`transformer-flows schema` (JSON Schema) all derive from these declarations. Names (fields,
solvers, weight ensembles, observables, figures, fit tasks) are checked against the
registries of `_registry.py`; they become objects in `_build.py` only.
"""

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ._registry import (
    FIELDS,
    FIGURES,
    IMPORT_PATH,
    INTERACTIONS,
    OBSERVABLES,
    PLACEMENTS,
    SOLVERS,
    TASKS,
    WEIGHTS,
    allow_imports,
    imports_allowed,
    refuse_if_imports_refused,
)
from ._yaml import MAX_YAML_BYTES, bounded_free_form, load_yaml


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or not among the allowed values. The
    message names the key path, the value, what is allowed and the fix."""


# --- value types ---------------------------------------------------------------------------


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string.
            return float(value)
        except ValueError:
            raise ValueError(f"must be a number, got the string {value!r}") from None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _integer(value: Any) -> Any:
    return value.item() if isinstance(value, np.integer) else value


def _as_list(value: Any) -> Any:
    """One value stands for a list of one."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
Integer = Annotated[int, Strict(), BeforeValidator(_integer)]
PositiveInteger = Annotated[Integer, Field(ge=1)]
NonNegativeInteger = Annotated[Integer, Field(ge=0)]
# jax.random.key takes a signed 64-bit seed.
Seed = Annotated[Integer, Field(ge=0, le=2**63 - 1)]
Precision = Literal["float64", "float32"]
ShapeList = Annotated[
    list[Annotated[Integer, Field(ge=2)]], BeforeValidator(_as_list), Field(min_length=1)
]


def _grid(value: Any) -> Any:
    """A list of numbers, one number, or {start, stop, num} (inclusive linspace)."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"start", "stop", "num"}
        if unknown or not {"start", "stop", "num"} <= set(value):
            raise ValueError(
                "a grid mapping has exactly the keys start, stop, num (inclusive linspace), "
                f"got {sorted(value)}"
            )
        start, stop, num = _number(value["start"]), _number(value["stop"]), value["num"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"grid `num` must be an integer >= 1, got {num!r}")
        if num > 1 and not stop > start:
            raise ValueError(f"grid `stop` must be > start={start} when num > 1, got {stop}")
        return [float(v) for v in np.linspace(start, stop, num)]
    return _as_list(value)


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"has repeated values {values}; list each once")
    return values


Grid = Annotated[list[Number], BeforeValidator(_grid), Field(min_length=1)]


def _registered(registry) -> AfterValidator:
    """A name of `registry`, or a list of them (each registered, each once); the error lists
    the registered names."""

    def check(value):
        if isinstance(value, str):
            registry[value]
            return value
        for name in value:
            registry[name]
        return _unique(value)

    return AfterValidator(check)


def _resolvable_field(name: str) -> str:
    """A registered name, or an import path `module:Class`: checked for its form only (and
    refused under TRANSFORMER_FLOWS_NO_IMPORTS); imported only inside `allow_imports()`, i.e.
    by `run_experiment` after the rest of the config validated (data is never code)."""
    if FIELDS.is_import_path(name):
        if not IMPORT_PATH.match(name):
            raise ValueError(
                f"{name!r} is neither a registered field ({FIELDS.names()}) nor an import "
                "path `package.module:Class`"
            )
        refuse_if_imports_refused(name, "field")
        if imports_allowed():
            FIELDS.resolve(name)
        return name
    FIELDS[name]  # unknown names: the error lists the registered ones
    return name


FieldName = Annotated[str, AfterValidator(_resolvable_field)]


class _Section(BaseModel):
    """Unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- shared vocabulary ---------------------------------------------------------------------


class SolverConfig(_Section):
    """How the flow is integrated: a registered solver (`SOLVERS`) and its options."""

    name: Annotated[str, _registered(SOLVERS)] = Field(
        "tsit5", description="registered solver, e.g. tsit5, normalized_euler"
    )
    rtol: PositiveNumber = Field(1e-6, description="relative tolerance (adaptive solvers)")
    atol: PositiveNumber = Field(1e-6, description="absolute tolerance (adaptive solvers)")
    dt: PositiveNumber | None = Field(None, description="the step of fixed-step solvers")
    max_steps: PositiveInteger = 16_384
    allow_failures: bool = Field(
        False, description="finish with exit status 0 although some solves failed (masked)"
    )

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        # Before issue 9: `method: adaptive` + `scheme: tsit5`, or `method: normalized_euler`.
        # A migration never drops a key silently: what it cannot carry over is refused.
        if isinstance(raw, Mapping) and ("method" in raw or "scheme" in raw):
            raw = dict(raw)
            method, scheme = raw.pop("method", None), raw.pop("scheme", None)
            old = {k: v for k, v in (("method", method), ("scheme", scheme)) if v is not None}
            if "name" in raw:
                raise ValueError(
                    f"solver.name = {raw['name']!r} and the old keys {old} both name a solver; "
                    f"keep only solver.name (e.g. solver.name={scheme or method})"
                )
            if scheme is not None and method not in (None, "adaptive"):
                raise ValueError(
                    f"solver.method = {method!r} (a fixed-step solver) and solver.scheme = "
                    f"{scheme!r} (an adaptive one) disagree; write solver.name=<one of them>"
                )
            raw["name"] = scheme or ("tsit5" if method in (None, "adaptive") else method)
            name = raw["name"]
            if name in SOLVERS and SOLVERS[name].adaptive and raw.get("dt") is not None:
                raise ValueError(
                    f"solver.dt = {raw['dt']!r} would be ignored: the old keys {old} mean the "
                    f"adaptive solver {name!r}, which chooses its own steps. Fix: remove "
                    f"solver.dt, or ask for a fixed step with solver.name=normalized_euler and "
                    "solver.dt"
                )
        return raw

    @model_validator(mode="after")
    def _step(self) -> "SolverConfig":
        if SOLVERS[self.name].adaptive:
            if self.dt is not None:
                raise ValueError(
                    f"`dt` is the step of fixed-step solvers; {self.name!r} chooses its own "
                    "steps from rtol/atol: remove solver.dt (override: solver.dt=null)"
                )
        elif self.dt is None:
            raise ValueError(
                f"solver {self.name!r} has a fixed step: set solver.dt, e.g. solver.dt=0.1"
            )
        return self

    @property
    def adaptive(self) -> bool:
        return SOLVERS[self.name].adaptive

    def describe(self) -> str:
        if self.adaptive:
            return f"Renormalized({self.name}) adaptive PID, rtol={self.rtol:g}, atol={self.atol:g}"
        return f"{self.name} fixed step dt={self.dt:g}"


class PlotConfig(_Section):
    snapshot_times: Grid | None = None
    movie_frames: PositiveInteger = 60
    max_panels_per_row: PositiveInteger = 3
    example_start: NonNegativeInteger = 0

    @field_validator("snapshot_times")
    @classmethod
    def _nonnegative(cls, values):
        if values is not None and min(values) < 0:
            raise ValueError(f"save times are >= 0, got {values}")
        return values


class _Experiment(_Section):
    name: str | None = Field(None, description="label of the run (default: the file's stem)")
    description: str = ""
    precision: Precision = "float64"
    figures: Annotated[list[str], BeforeValidator(_as_list), _registered(FIGURES)] = []
    plot: PlotConfig = PlotConfig()
    smoke: Annotated[dict[str, Any], AfterValidator(bounded_free_form)] = Field(
        {}, description="key.path: value overrides applied by --smoke (toy size)"
    )
    _smoke_run: bool = PrivateAttr(False)

    @property
    def smoke_run(self) -> bool:
        """Whether the `smoke:` overrides were applied (a toy-size run)."""
        return self._smoke_run

    @field_validator("name")
    @classmethod
    def _file_name(cls, name):
        if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
            raise ValueError(
                f"the name labels output files, so it cannot be empty or hold '/' or '\\', "
                f"got {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _figure_kinds(self):
        for figure in self.figures:
            if FIGURES[figure].experiment != self.experiment:
                allowed = [f for f in FIGURES if FIGURES[f].experiment == self.experiment]
                raise ValueError(
                    f"figure {figure!r} draws {FIGURES[figure].experiment} runs; a "
                    f"{self.experiment} experiment draws {allowed}"
                )
        return self

    def numerics(self) -> dict:
        """The resolved config without the parts that do not change the numbers (a rerun
        may change those and still resume)."""
        # `solver.allow_failures` decides the exit status, not the numbers.
        return self.model_dump(
            mode="json",
            exclude={
                "name": True,
                "description": True,
                "figures": True,
                "plot": True,
                "smoke": True,
                "solver": {"allow_failures"},
            },
        )

    def resolved(self) -> dict:
        """The resolved config (defaults filled in), as saved with the output."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True)


# --- simulation sweeps ---------------------------------------------------------------------

# The parameters of each noise kind (transformer_flows/_noise.py); fixed under model.noise or
# swept under sweep.params.
NOISE_PARAMETERS = {"independent": ("kappa",), "common": ("sigma",), "sum": ("kappa", "sigma")}


class NoiseConfig(_Section):
    """Noise of a noisy sweep: the Stratonovich SDE dX = P_X(drift) dt + noise ∘ dW on the
    sphere (`solve(..., noise=, key=)`, docs/models.md "Noisy dynamics"), integrated by an
    SDE solver (`solver.name`: heun, euler_heun, euler_maruyama) at the step `solver.dt`. Each
    start draws its Brownian path from a key of its own, the same for every β, ensemble and
    parameter (common random numbers); the draws of starts and weights are those of the
    noiseless sweep. A parameter left null here is swept under `sweep.params` instead."""

    kind: Literal["independent", "common", "sum"] = Field(
        description="independent: one Brownian motion per token, IndependentNoise(kappa); "
        "common: one random rotation for all tokens, CommonNoise(sigma); sum: both"
    )
    kappa: PositiveNumber | None = Field(
        None,
        description="inverse noise strength κ of the independent noise (diffusion sqrt(2/κ) "
        "per token); null: swept as sweep.params.kappa",
    )
    sigma: PositiveNumber | None = Field(
        None,
        description="strength σ of the common noise (dQ = σ/√2 · symmetric Gaussian); null: "
        "swept as sweep.params.sigma",
    )

    @model_validator(mode="after")
    def _parameters_of_kind(self):
        for name in ("kappa", "sigma"):
            if getattr(self, name) is not None and name not in NOISE_PARAMETERS[self.kind]:
                raise ValueError(
                    f"{name}: a {self.kind!r} noise has no parameter {name!r} (it takes "
                    f"{list(NOISE_PARAMETERS[self.kind])}); remove it or use kind: sum"
                )
        return self

    @property
    def parameters(self) -> tuple[str, ...]:
        return NOISE_PARAMETERS[self.kind]


class ModelConfig(_Section):
    """The vector field and the shapes it is integrated at."""

    field: FieldName = Field(
        "SA", description="registered field (SA, USA, Kuramoto) or module:Class"
    )
    params: Annotated[dict[str, Any], AfterValidator(bounded_free_form)] = Field(
        {}, description="fixed constructor parameters of the field, e.g. {gain: 1.0}"
    )
    n: ShapeList
    d: ShapeList
    weights: Annotated[
        list[str], BeforeValidator(_as_list), Field(min_length=1), _registered(WEIGHTS)
    ] = ["identity"]
    heads: PositiveInteger | None = Field(None, description="H heads of random weights (H, d, d)")
    layers: PositiveInteger | None = Field(
        None, description="L per-layer random weights, piecewise constant over [0, t1]"
    )
    initial: Annotated[
        list[Literal["sphere", "hemisphere", "orthonormal"]],
        BeforeValidator(_as_list),
        Field(min_length=1),
    ] = Field(
        ["sphere"],
        description="start(s): uniform on the sphere, on a hemisphere, or a random orthonormal "
        "frame (d >= n); a list is one more axis of the sweep",
    )
    placement: Annotated[
        list[str], BeforeValidator(_as_list), Field(min_length=1), _registered(PLACEMENTS)
    ] = Field(
        ["post_ln"],
        description="normalisation placement(s) (post_ln: the field itself; pre_ln, peri_ln, "
        "ngpt, mix_ln, no_norm); a list is one more axis of the sweep",
    )
    placement_params: Annotated[dict[str, Any], AfterValidator(bounded_free_form)] = Field(
        {}, description="parameters of the placements, e.g. {alpha: 0.5} for ngpt"
    )
    noise: NoiseConfig | None = Field(
        None, description="noise of a noisy sweep (an SDE); null: the deterministic flow"
    )
    weights_params: dict[str, Number] = Field(
        {},
        description="fixed parameters of parameterised weight ensembles, e.g. {alpha_A: 0.5, "
        "alpha_L: 1.0, beta0: 1.0} for random_transformer (or sweep them under sweep.params)",
    )

    @field_validator("n", "d", "initial")
    @classmethod
    def _unique_shapes(cls, values):
        return _unique(values)

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # Configs written before placements existed keep their saved form (and fingerprint).
        data = handler(self)
        if data.get("placement") == ["post_ln"]:
            data.pop("placement")
        if data.get("placement_params") == {}:
            data.pop("placement_params")
        if data.get("noise", 0) is None:
            data.pop("noise")
        if data.get("weights_params") == {}:
            data.pop("weights_params")
        if isinstance(data.get("initial"), list) and len(data["initial"]) == 1:
            data["initial"] = data["initial"][0]
        return data

    @model_validator(mode="after")
    def _placements(self):
        entry = FIELDS.lookup(self.field)
        if entry is None:  # an import path: checked by run_experiment, after importing it
            return self
        wrapped = [p for p in self.placement if PLACEMENTS[p].wrap is not None]
        if wrapped and entry.state != "points":
            raise ValueError(
                f"placement: {wrapped} wrap a sphere field; {self.field!r} moves angles"
            )
        allowed = {name for p in self.placement for name in PLACEMENTS[p].parameters}
        for name in self.placement_params:
            if name not in allowed:
                raise ValueError(
                    f"placement_params.{name}: not a parameter of the placements "
                    f"{self.placement}; allowed: {sorted(allowed)}"
                )
        for name in wrapped:
            placement = PLACEMENTS[name]
            params = {k: v for k, v in self.placement_params.items() if k in placement.parameters}
            if name == "mix_ln" and self.layers and "layer_duration" not in params:
                # The sweep gives the field per-layer weights of duration t1/layers.
                if not 0 <= params.get("post_ln_layers", 0) <= self.layers:
                    raise ValueError(
                        f"placement_params.post_ln_layers: must lie in [0, model.layers = "
                        f"{self.layers}], got {params.get('post_ln_layers')!r}"
                    )
                params = {**params, "layer_duration": 1.0}
            try:
                field = entry.cls(**{"beta": 1.0, **entry.resolve_params(self.params)})
                placement.wrap(field, **params)
            except Exception as err:  # the placement's own message names the parameter
                raise ValueError(f"placement_params: {name} refuses {params}: {err}") from None
        if "orthonormal" in self.initial and max(self.n) > min(self.d):
            raise ValueError(
                f"initial: 'orthonormal' needs d >= n for every shape, got n = {self.n}, "
                f"d = {self.d}"
            )
        return self

    @model_validator(mode="after")
    def _field_accepts(self):
        entry = FIELDS.lookup(self.field)
        if entry is None:  # an import path: checked by run_experiment, after importing it
            return self
        parameters = entry.parameters()
        for name in self.params:
            if name not in parameters:
                raise ValueError(
                    f"params.{name}: {entry.cls.__name__} has no parameter {name!r}; its "
                    f"parameters are {sorted(parameters)}"
                )
            if name in ("beta", "Q", "K", "V"):
                raise ValueError(
                    f"params.{name}: {name} is set by the sweep (sweep.beta, model.weights), "
                    "not under model.params"
                )
        if "beta" not in parameters:
            raise ValueError(f"field {self.field!r} has no parameter `beta`, which sweep.beta sets")
        _try_build(entry, self.params, "params")
        random = [w for w in self.weights if WEIGHTS[w].draw is not None]
        if random and not entry.takes_weights:
            raise ValueError(
                f"weights {random} need a field with Q, K, V; {entry.cls.__name__} has none: "
                "use weights=identity"
            )
        if not entry.random_values:
            bad = [w for w in random if WEIGHTS[w].random_values]
            if bad:
                raise ValueError(
                    f"field {self.field!r} is defined with V = I here "
                    "(docs/mathematics.md, USA); use a `query_key:identity` ensemble or field SA"
                    f", got weights {bad}"
                )
        declared = {name for w in self.weights for name in WEIGHTS[w].parameters}
        for name in self.weights_params:
            if name not in declared:
                raise ValueError(
                    f"weights_params.{name}: not a parameter of the weight ensembles "
                    f"{self.weights}; allowed: {sorted(declared)}"
                )
        for w in self.weights:
            _check_weights_parameters(w, self.weights_params, "weights_params")
        if (self.heads or self.layers) and not random:
            raise ValueError(
                "model.heads and model.layers stack random weights; identity weights have "
                "none (H identity heads act as one head with V = H·I): draw random weights, "
                "e.g. model.weights=ginibre:identity"
            )
        if entry.state == "angles" and self.d != [2]:
            raise ValueError(
                f"field {self.field!r} moves angles on the circle: needs model.d = 2, got {self.d}"
            )
        return self


def _check_weights_parameters(name: str, values: dict, where: str) -> None:
    """Validate the values meant for ensemble `name` with its schema (ranges, types)."""
    entry = WEIGHTS[name]
    if entry.schema is None:
        return
    mine = {k: v for k, v in values.items() if k in entry.parameters}
    try:
        entry.schema(**mine)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False)
        )
        raise ValueError(f"{where}: ensemble {name!r} refuses {mine}: {problems}") from None


def weights_parameters(config) -> dict[str, dict[str, Any]]:
    """Per parameterised ensemble of a sweep: its fixed parameters (schema defaults, then
    `model.weights_params`); the swept ones come from `sweep.params`."""
    model = config.model
    return {
        w: {**WEIGHTS[w].schema().model_dump(), **model.weights_params}
        for w in model.weights
        if WEIGHTS[w].schema is not None
    }


def _try_build(entry, params: dict, where: str) -> None:
    """Build the field once with these parameters (β = 1), so a bad parameter value is refused
    when the config is read, not after compiling."""
    try:
        entry.cls(**{"beta": 1.0, **entry.resolve_params(params)})
    except Exception as err:  # the field's own message names the parameter
        raise ValueError(
            f"{where}: {entry.cls.__name__}(beta=1.0, **{params}) is refused: {err}"
        ) from None


class SweepConfig(_Section):
    """The axes swept in one vmapped program: β, random starts, tolerances, parameters."""

    beta: Grid
    starts: PositiveInteger
    seed: Seed = 0
    tolerance: Annotated[list[PositiveNumber], BeforeValidator(_as_list)] | None = Field(
        None, description="rtol = atol axis of an adaptive solver"
    )
    chunk_size: PositiveInteger | Literal["auto"] = "auto"
    memory_budget_mb: PositiveNumber = 256.0
    params: dict[str, Grid] = Field(
        {}, description="axes over scalar field parameters, e.g. {gain: [0.5, 2.0]}"
    )

    @field_validator("beta")
    @classmethod
    def _beta(cls, values):
        # β < 0 (repulsive softmax) is valid for the fields; fields whose figures and
        # summaries draw theory curves refuse it in SimulationConfig's cross-checks.
        return _unique(values)

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, values):
        return None if values is None else _unique(values)

    @field_validator("params")
    @classmethod
    def _params(cls, params):
        for name, values in params.items():
            _unique(values)
            if name in ("beta", "start", "rtol", "time", "n", "d", "weights"):
                raise ValueError(f"params.{name}: {name!r} is a dimension of the sweep already")
        return params


class TimeConfig(_Section):
    t1: PositiveNumber
    num: Annotated[Integer, Field(ge=2)]

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t1, self.num)


class ObservablesConfig(_Section):
    names: Annotated[
        list[str], BeforeValidator(_as_list), Field(min_length=1), _registered(OBSERVABLES)
    ] = ["clustered_fraction"]
    delta: Annotated[PositiveNumber, Field(lt=2)] = 1e-3
    harmonic: PositiveInteger = 1


class SimulationConfig(_Experiment):
    """Particles integrated by `solve` over a grid of β, starts, weights, shapes, parameters."""

    experiment: Literal["simulation"] = "simulation"
    model: ModelConfig
    sweep: SweepConfig
    time: TimeConfig
    solver: SolverConfig = SolverConfig()
    observables: ObservablesConfig = ObservablesConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        model, names = self.model, self.observables.names
        # None for an import path: its checks run in run_experiment, after importing it.
        entry = FIELDS.lookup(model.field)
        negative = [beta for beta in self.sweep.beta if beta < 0]
        if negative and entry is not None and entry.theory_model is not None:
            raise ValueError(
                f"sweep.beta: β < 0 ({negative}, the repulsive softmax) is outside the theory "
                f"curves (Γ∞,δ, ℓ*(β), defined for β >= 0) that figures and summaries draw for "
                f"field {model.field!r}: sweep β >= 0 here, or register the class without a "
                "theory_model, e.g. FIELDS.register('SA_repulsive', FieldEntry(SelfAttention))"
            )
        for figure in self.figures:
            needs = FIGURES[figure]
            for needed in needs.observables:
                if needed not in names:
                    raise ValueError(
                        f"figure {figure!r} needs observable {needed!r}: add it to "
                        f"observables.names {names}"
                    )
            if needs.d is not None and model.d != [needs.d]:
                raise ValueError(f"figure {figure!r} needs model.d = {needs.d}, got {model.d}")
            if needs.noise is not None and (model.noise is None or model.noise.kind != needs.noise):
                raise ValueError(
                    f"figure {figure!r} draws noisy sweeps: needs model.noise.kind = "
                    f"{needs.noise!r}, got {None if model.noise is None else model.noise.kind!r}"
                )
        for name in names:
            observable = OBSERVABLES[name]
            if observable.per_shape and (len(model.n) > 1 or len(model.d) > 1):
                raise ValueError(
                    f"observable {name!r} changes shape with n and d: use one model.n and one "
                    "model.d with it"
                )
            if observable.d is not None and model.d != [observable.d]:
                raise ValueError(
                    f"observable {name!r} is defined for d = {observable.d}: needs model.d = "
                    f"{observable.d}, got {model.d}"
                )
        parameters = entry.parameters() if entry is not None else {}
        self._noise_checks(entry, parameters)
        self._weights_checks(entry)
        noise_swept = () if model.noise is None else model.noise.parameters
        weights_swept = {n for w in model.weights for n in WEIGHTS[w].parameters}
        for name in self.sweep.params if entry is not None else ():
            if name in noise_swept or name in weights_swept:
                continue
            if name not in parameters:
                raise ValueError(
                    f"sweep.params.{name}: {entry.cls.__name__} has no parameter {name!r}; its "
                    f"parameters are {sorted(parameters)}"
                )
            if entry.is_static(name) or name in ("Q", "K", "V"):
                raise ValueError(
                    f"sweep.params.{name}: {name!r} is not a scalar array parameter of "
                    f"{entry.cls.__name__} (static fields are fixed at compile time): set it "
                    "under model.params instead"
                )
            _try_build(
                entry, {**model.params, name: self.sweep.params[name][0]}, f"sweep.params.{name}"
            )
        if entry is not None and entry.state == "angles" and SOLVERS[self.solver.name].points_only:
            points = [name for name in SOLVERS if not SOLVERS[name].points_only]
            raise ValueError(
                f"solver.name: {self.solver.name!r} steps points on a sphere; field "
                f"{model.field!r} moves angles: choose one of {points}"
            )
        if self.sweep.tolerance is not None and not self.solver.adaptive:
            raise ValueError(
                f"sweep.tolerance is an axis of adaptive solvers; {self.solver.name!r} has a "
                "fixed step: set sweep.tolerance=null"
            )
        if not self.solver.adaptive:
            steps = math.ceil(self.time.t1 / self.solver.dt - 1e-9)
            if steps > self.solver.max_steps:
                raise ValueError(
                    f"the fixed step dt={self.solver.dt} needs {steps} steps to reach "
                    f"t1={self.time.t1}: raise solver.max_steps above {self.solver.max_steps}"
                )
        return self

    def _weights_checks(self, entry) -> None:
        """Parameterised ensembles (their shapes, swept values) and observables that read the
        attention field's heads."""
        model = self.model
        for w in model.weights:
            weights = WEIGHTS[w]
            if weights.check is not None:
                weights.check(model.d, model.heads or 1, model.layers or 1, self.time.t1)
            for name in weights.parameters:
                if name in self.sweep.params:
                    if name in model.weights_params:
                        raise ValueError(
                            f"sweep.params.{name}: also fixed under model.weights_params.{name}; "
                            "keep one"
                        )
                    if entry is not None and name in entry.parameters():
                        raise ValueError(
                            f"sweep.params.{name}: both ensemble {w!r} and field "
                            f"{model.field!r} have a parameter {name!r}"
                        )
                    for value in self.sweep.params[name]:
                        _check_weights_parameters(w, {name: value}, f"sweep.params.{name}")
        reads_field = [n for n in self.observables.names if OBSERVABLES[n].field]
        if reads_field:
            random = [w for w in model.weights if WEIGHTS[w].draw is not None]
            if (model.heads or 1) < 2 or random != model.weights:
                raise ValueError(
                    f"observables.names: {reads_field} compare the heads of random attention "
                    f"weights: set model.heads >= 2 and random weights only (got heads = "
                    f"{model.heads}, weights = {model.weights})"
                )

    def _noise_checks(self, entry, parameters) -> None:
        model, solver = self.model, SOLVERS[self.solver.name]
        noise = model.noise
        if noise is None:
            if solver.stochastic:
                raise ValueError(
                    f"solver.name: {self.solver.name!r} is an SDE solver of noisy sweeps; this "
                    "sweep has no model.noise: set model.noise (e.g. {kind: independent, kappa: "
                    "4.0}) or choose an ODE solver such as tsit5"
                )
            return
        if not solver.stochastic:
            sde = [name for name in SOLVERS if SOLVERS[name].stochastic]
            raise ValueError(
                f"solver.name: a noisy sweep (model.noise) needs an SDE solver, one of {sde} "
                f"with solver.dt; got {self.solver.name!r}"
            )
        if entry is not None and entry.state != "points":
            raise ValueError(
                f"model.noise: noise moves points on the sphere; field {model.field!r} moves "
                "angles: use a sphere field such as SA with model.d = 2"
            )
        euclidean = [p for p in model.placement if PLACEMENTS[p].euclidean]
        if euclidean:
            raise ValueError(
                f"model.noise: noise is defined on the sphere; the placements {euclidean} move "
                "states in R^d: use post_ln or ngpt"
            )
        if self.sweep.tolerance is not None:
            raise ValueError("sweep.tolerance: a noisy sweep has a fixed step: remove it")
        for name in noise.parameters:
            fixed, swept = getattr(noise, name) is not None, name in self.sweep.params
            if fixed == swept:
                raise ValueError(
                    f"model.noise.{name}: a {noise.kind!r} noise needs {name} either fixed "
                    f"(model.noise.{name}) or swept (sweep.params.{name}), "
                    f"{'not both' if fixed else 'got neither'}"
                )
            if swept:
                if name in parameters:
                    raise ValueError(
                        f"sweep.params.{name}: both the noise and field {model.field!r} have a "
                        f"parameter {name!r}; fix the noise's under model.noise.{name}"
                    )
                bad = [value for value in self.sweep.params[name] if not value > 0]
                if bad:
                    raise ValueError(f"sweep.params.{name}: must be > 0, got {bad}")

    @property
    def times(self) -> np.ndarray:
        return self.time.times


# --- theory figures ------------------------------------------------------------------------


class LongContextSection(_Section):
    """One attention layer at β = γ log n on equiangular tokens (`theory.long_context_*`):
    the output cosine against n for each ρ and γ = ratio × γ_c(ρ), γ_c = 1/(1 - ρ)."""

    rho: Grid = Field([0.5], description="input cosines, each in (0, 1)")
    gamma_ratio: Grid = Field([0.5, 1.0, 1.5], description="γ / γ_c(ρ), each >= 0")
    log10_n: Grid = Field(
        default_factory=lambda: _grid({"start": 0.5, "stop": 12.0, "num": 116}),
        description="token counts n = round(10^value), each >= 2",
    )
    residual: NonNegativeNumber = Field(0.0, description="r in u_i = A_i + r y_i")

    @field_validator("rho")
    @classmethod
    def _open_unit(cls, rho):
        if not all(0 < value < 1 for value in rho):
            raise ValueError(f"every rho must lie in (0, 1), got {rho}")
        return _unique(rho)

    @field_validator("gamma_ratio")
    @classmethod
    def _nonnegative(cls, ratios):
        if not all(value >= 0 for value in ratios):
            raise ValueError(f"every gamma_ratio must be >= 0, got {ratios}")
        return _unique(ratios)

    @field_validator("log10_n")
    @classmethod
    def _token_counts(cls, values):
        if not all(math.log10(2) - 1e-12 <= value <= 15 for value in values):
            raise ValueError(f"every log10_n must lie in [log10(2), 15] (n >= 2), got {values}")
        return values

    @property
    def token_counts(self) -> np.ndarray:
        """n = round(10^log10_n), each once, increasing."""
        return np.unique(np.maximum(np.round(10.0 ** np.asarray(self.log10_n)), 2)).astype(int)


class TheorySection(_Section):
    n: Annotated[Integer, Field(ge=2)] = 32
    d: ShapeList = [2]
    delta: PositiveNumber = 1e-3
    beta: Grid = Field(default_factory=lambda: _grid({"start": 0.0, "stop": 9.0, "num": 91}))
    tau: Grid = Field(
        default_factory=lambda: _grid({"start": -3.14159, "stop": 3.14159, "num": 801})
    )
    t1: PositiveNumber = 30.0
    long_context: LongContextSection | None = Field(
        None, description="one attention layer at β = γ log n (figure long_context)"
    )


class TheoryConfig(_Experiment):
    """Curves of `transformer_flows.theory` on grids (Figs. 2 and 6)."""

    experiment: Literal["theory"]
    theory: TheorySection = TheorySection()

    @model_validator(mode="after")
    def _long_context_figure(self):
        if "long_context" in self.figures and self.theory.long_context is None:
            raise ValueError(
                "figure long_context needs a theory.long_context section, e.g. "
                "theory: {long_context: {rho: [0.5]}}"
            )
        return self


# --- fits ----------------------------------------------------------------------------------


def _activation_name(value: Any) -> Any:
    from .._field._feed_forward import ACTIVATIONS

    if value not in ACTIVATIONS:
        raise ValueError(f"unknown activation {value!r}; choose among {sorted(ACTIVATIONS)}")
    return value


class FeedForwardConfig(_Section):
    """A trainable feed-forward term w σ(a x + b) beside the attention (a `TransformerBlock`),
    per layer when `model.layers` is set. Initial weights (seeded by `seed`): a and b entries
    N(0, 1) (so (a x)_k ~ N(0, 1) for unit x), w entries N(0, init_scale²/width)."""

    width: PositiveInteger | None = Field(None, description="hidden width m (null: d)")
    activation: Annotated[str, AfterValidator(_activation_name)] = Field(
        "tanh", description="relu | gelu | silu | tanh | sigmoid | identity"
    )
    init_scale: NonNegativeNumber = Field(
        1.0, description="w entries N(0, init_scale²/width); 0 starts at pure attention"
    )
    bias: bool = Field(True, description="a bias b (false: b = 0, not trained)")


class FitModelConfig(_Section):
    """The trained model: a registered attention field with random Gaussian weights (heads,
    layers, low rank), or any field `module:Class` built from `params`."""

    field: FieldName = Field("SA", description="registered field or module:Class")
    params: Annotated[dict[str, Any], AfterValidator(bounded_free_form)] = Field(
        {}, description="constructor parameters, e.g. {beta: 1.0}"
    )
    d: Annotated[Integer, Field(ge=2)]
    heads: PositiveInteger | None = None
    layers: PositiveInteger | None = None
    rank: PositiveInteger | None = None
    init_scale: PositiveNumber = 1.0
    identity: list[Literal["Q", "K", "V"]] = Field(
        [], description="weights kept at the identity (not trainable)"
    )
    start_at_identity: list[Literal["Q", "K", "V"]] = Field(
        [], description="weights initialised to the identity (trainable)"
    )
    feed_forward: FeedForwardConfig | None = Field(
        None, description="a trainable feed-forward term (train it as `feed_forward`)"
    )

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # Fit configs written before feed-forward terms existed keep their saved form (and
        # fingerprint), so their output directories still resume.
        data = handler(self)
        if data.get("feed_forward") is None:
            data.pop("feed_forward", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        # Before issue 9: `kind: sa|usa`, `dim`, `beta` beside the other keys.
        if isinstance(raw, Mapping) and {"kind", "dim", "beta"} & set(raw):
            raw = dict(raw)
            if "kind" in raw:
                raw["field"] = {"sa": "SA", "usa": "USA"}.get(raw["kind"], raw["kind"])
                del raw["kind"]
            if "dim" in raw:
                raw["d"] = raw.pop("dim")
            if "beta" in raw:
                raw["params"] = {"beta": raw.pop("beta"), **dict(raw.get("params") or {})}
        return raw

    @model_validator(mode="after")
    def _checks(self):
        entry = FIELDS.lookup(self.field)
        if entry is None:  # an import path: checked by run_experiment, after importing it
            return self
        parameters = entry.parameters()
        for name in self.params:
            if name not in parameters or name in ("Q", "K", "V"):
                raise ValueError(
                    f"params.{name}: not a parameter of {entry.cls.__name__} set here; its "
                    f"parameters are {sorted(set(parameters) - {'Q', 'K', 'V'})}"
                )
        if entry.state != "points":
            raise ValueError(f"fits move points on the sphere; {self.field!r} moves angles")
        if not entry.takes_weights and (self.heads or self.layers or self.rank):
            raise ValueError(
                f"heads/layers/rank shape the Q, K, V of attention fields; "
                f"{entry.cls.__name__} has none"
            )
        if self.rank is not None and self.rank > self.d:
            raise ValueError(f"rank {self.rank} exceeds d = {self.d}")
        if self.feed_forward is not None and not entry.takes_weights:
            raise ValueError(
                f"feed_forward: a feed-forward term is added to attention fields (SA, USA); "
                f"{entry.cls.__name__} is not one (remove `feed_forward`)"
            )
        return self


class TaskConfig(BaseModel):
    """`kind`: a registered fit task (`TASKS`); the other keys are that task's schema (the
    saved config holds them with their defaults filled in)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str

    @model_validator(mode="before")
    @classmethod
    def _task_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or "kind" not in raw:
            return raw
        rest = {key: value for key, value in raw.items() if key != "kind"}
        try:
            entry = TASKS[raw["kind"]]
        except ValueError as err:
            raise ValueError(f"kind: {err}") from None
        try:
            spec = entry.schema.model_validate(rest)
        except ValidationError as err:
            first, *others = err.errors(include_url=False)
            message = first["msg"].removeprefix("Value error, ")
            more = f" (and {len(others)} more errors)" if others else ""
            raise ValueError(
                f"{_location(first['loc'])}: {message} for task kind {raw['kind']!r}{more}"
            ) from None
        return {"kind": raw["kind"], **spec.model_dump(mode="json")}

    def spec(self):
        """The validated task keys (an instance of the task's schema)."""
        return TASKS[self.kind].schema.model_validate(self.model_extra or {})


class TrainConfig(_Section):
    parameters: list[str] = ["Q", "K", "V", "beta"]
    steps: NonNegativeInteger
    batch_size: PositiveInteger = 16
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: PositiveNumber
    schedule: Literal["constant", "cosine", "warmup_cosine"] = "constant"
    warmup_steps: NonNegativeInteger = 0
    clip_norm: PositiveNumber | None = Field(None, description="global-norm clipping (> 0)")
    eval_every: NonNegativeInteger = 0
    eval_size: PositiveInteger = 64
    checkpoint_every: NonNegativeInteger = 0


class FlowConfig(_Section):
    horizon: PositiveNumber
    adjoint: Literal["recursive_checkpoint", "backsolve"] = "recursive_checkpoint"
    checkpoints: PositiveInteger | None = None


class FitConfig(_Experiment):
    """Fit Q, K, V and/or β by differentiating through the flow."""

    experiment: Literal["fit"]
    seed: Seed = 0
    precision: Precision = "float32"
    model: FitModelConfig
    task: TaskConfig
    train: TrainConfig
    flow: FlowConfig
    solver: SolverConfig = SolverConfig(rtol=1e-4, atol=1e-4, max_steps=4096)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        # Before issue 9 the solver options sat in `flow` (solver, dt0, rtol, atol, max_steps).
        if isinstance(raw, Mapping) and isinstance(raw.get("flow"), Mapping):
            flow = dict(raw["flow"])
            moved = {
                k: flow.pop(k) for k in ("solver", "dt0", "rtol", "atol", "max_steps") if k in flow
            }
            if moved:
                raw = dict(raw)
                solver = dict(raw.get("solver") or {})
                renamed = {"solver": "name", "dt0": "dt"}
                for old_key, value in moved.items():
                    key = renamed.get(old_key, old_key)
                    if old_key == "dt0" and value is None:
                        continue
                    if key in solver and solver[key] != value:
                        # A migration never drops a key silently.
                        raise ValueError(
                            f"flow.{old_key} = {value!r} (the old place) and solver.{key} = "
                            f"{solver[key]!r} disagree; keep only solver.{key}"
                        )
                    solver[key] = value
                raw["flow"], raw["solver"] = flow, solver
        return raw

    @model_validator(mode="after")
    def _parameters(self):
        entry = FIELDS.lookup(self.model.field)
        if entry is None:  # an import path: checked by run_experiment, after importing it
            return self
        for name in self.train.parameters:
            if name == "feed_forward":
                if self.model.feed_forward is None:
                    raise ValueError(
                        "train.parameters: 'feed_forward' needs a feed-forward term; set "
                        "model.feed_forward (e.g. {width: 8, activation: tanh})"
                    )
                continue
            if name not in entry.parameters():
                raise ValueError(
                    f"train.parameters: {name!r} is not a parameter of {entry.cls.__name__}; "
                    f"choose among {sorted(entry.parameters())}"
                )
            if name in self.model.identity:
                raise ValueError(
                    f"train.parameters: {name!r} is kept at the identity (model.identity) and "
                    "cannot be trained; use model.start_at_identity to train it from I"
                )
        if self.train.schedule == "warmup_cosine" and self.train.warmup_steps < 1:
            raise ValueError("schedule warmup_cosine needs train.warmup_steps >= 1")
        return self


# --- pretrained models ---------------------------------------------------------------------

# What a `pretrained` experiment compares: the model's own hidden states (our JAX forward), the
# discrete layer map of our fields with the same weights, and the continuous flow.
PRETRAINED_SOURCES = ("model", "discrete_map", "flow")
# The default `statistics`: every built-in observable that is a scalar for any d (a fixed list,
# so observables registered later do not change the fingerprint of existing configs).
HIDDEN_STATISTICS = (
    "mean_cosine",
    "centred_cosine",
    "effective_rank",
    "cluster_count",
    "clustered_fraction",
    "energy",
    "mean_radius",
)


class PretrainedFlowSection(_Section):
    """The continuous flow (layer l on [l, l + 1)) is saved at t = 0, 1, …, layers, where it
    meets the discrete layers; `t_max` adds `tail_num` more save times, geometrically spaced
    up to t_max, with the last (shared) layer's weights: ALBERT's t → ∞."""

    t_max: PositiveNumber | None = Field(
        None, description="flow further to this time (ALBERT, shared layer); null: no tail"
    )
    tail_num: PositiveInteger = Field(16, description="save times of the tail")
    solver: SolverConfig = Field(
        SolverConfig(rtol=1e-5, atol=1e-5),
        description="how the flow is integrated (tf.solve); float32 states: tolerances >= 1e-6",
    )


class PretrainedHistogramSection(_Section):
    bins: Annotated[Integer, Field(ge=2, le=10_000)] = Field(
        40, description="equal bins of <θ_i, θ_j> on [-1, 1] (density over pairs i < j)"
    )


class PretrainedPlotConfig(_Section):
    """Presentation only (a rerun may change it and still resume)."""

    histogram_layers: Annotated[list[NonNegativeNumber], BeforeValidator(_as_list)] | None = Field(
        None,
        description="layers (flow times) with a histogram panel; null: 0, 1 and quarters of "
        "the depth",
    )
    max_panels_per_row: PositiveInteger = 4

    @field_validator("histogram_layers")
    @classmethod
    def _unique_layers(cls, values):
        return None if values is None else _unique(values)


class PretrainedConfig(_Experiment):
    """Hidden-state statistics per layer of a local pretrained checkpoint, for its own layers,
    the discrete layer map of our fields with the same weights and the continuous flow."""

    experiment: Literal["pretrained"]
    precision: Precision = "float32"
    checkpoint: str = Field(
        description="directory of a Hugging Face-style checkpoint (config.json, "
        "model.safetensors, tokenizer.json)",
        min_length=1,
    )
    texts: Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)] | None = Field(
        None, description="input texts (or text_file)"
    )
    text_file: str | None = Field(
        None, description="UTF-8 file of input texts, one per non-empty line (or texts)"
    )
    max_tokens: Annotated[Integer, Field(ge=2)] | None = Field(
        None, description="keep the first max_tokens tokens of each text; null: all"
    )
    layers: PositiveInteger | None = Field(
        None, description="layers to run; null: the model's depth (ALBERT may go beyond)"
    )
    compare: Annotated[
        list[Literal["model", "discrete_map", "flow"]],
        BeforeValidator(_as_list),
        Field(min_length=1),
    ] = Field(list(PRETRAINED_SOURCES), description="which of model, discrete_map, flow")
    statistics: Annotated[
        list[str], BeforeValidator(_as_list), Field(min_length=1), _registered(OBSERVABLES)
    ] = Field(list(HIDDEN_STATISTICS), description="registered scalar observables")
    delta: Annotated[PositiveNumber, Field(lt=2)] = Field(
        1e-3, description="cluster_count and clustered_fraction: <θ_i, θ_j> >= 1 - delta"
    )
    beta: Number = Field(1.0, description="β of the energy statistic")
    histogram: PretrainedHistogramSection = PretrainedHistogramSection()
    flow: PretrainedFlowSection = PretrainedFlowSection()
    plot: PretrainedPlotConfig = PretrainedPlotConfig()

    @field_validator("texts")
    @classmethod
    def _nonempty_texts(cls, texts):
        if texts is not None and any(not text.strip() for text in texts):
            raise ValueError("every text must hold some non-blank characters")
        return texts

    @field_validator("compare")
    @classmethod
    def _unique_sources(cls, values):
        return _unique(values)

    @model_validator(mode="after")
    def _pretrained_checks(self):
        if (self.texts is None) == (self.text_file is None):
            raise ValueError(
                "texts: give the input texts either as `texts` (a list) or as `text_file` (one "
                f"text per line), not {'both' if self.texts else 'neither'}"
            )
        for name in self.statistics:
            entry = OBSERVABLES[name]
            if entry.dims or entry.d is not None or entry.per_shape:
                scalar = [
                    n
                    for n in OBSERVABLES
                    if not OBSERVABLES[n].dims
                    and OBSERVABLES[n].d is None
                    and not OBSERVABLES[n].per_shape
                ]
                raise ValueError(
                    f"statistics: {name!r} is not a scalar statistic of states of any "
                    f"dimension; choose among {scalar}"
                )
        if self.flow.t_max is not None:
            if "flow" not in self.compare:
                raise ValueError("flow.t_max: the flow's tail needs 'flow' in `compare`")
            if self.layers is not None and self.flow.t_max <= self.layers:
                raise ValueError(
                    f"flow.t_max: the tail goes beyond the last layer, so t_max must exceed "
                    f"layers = {self.layers}, got {self.flow.t_max}"
                )
        return self

    def read_texts(self) -> list[str]:
        """The input texts: `texts`, or the non-empty lines of `text_file`."""
        if self.texts is not None:
            return list(self.texts)
        path = Path(self.text_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"config key `text_file`: cannot read {str(path)!r} ({err}). Fix: point "
                "text_file at a UTF-8 file with one text per line, or give `texts`."
            ) from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise ConfigError(f"config key `text_file`: {str(path)!r} holds no text.")
        return texts


# --- the tagged union ----------------------------------------------------------------------

KINDS: dict[str, type[_Experiment]] = {
    "simulation": SimulationConfig,
    "theory": TheoryConfig,
    "fit": FitConfig,
    "pretrained": PretrainedConfig,
}
Config = SimulationConfig | TheoryConfig | FitConfig | PretrainedConfig


def _kind_of(raw: Mapping) -> type[_Experiment]:
    kind = raw.get("experiment", "simulation")
    if kind not in KINDS:
        raise ConfigError(
            f"config key `experiment`: must be one of {list(KINDS)}, got {kind!r}. Fix: set "
            "experiment: simulation (sweeps), theory (theory figures), fit or pretrained."
        )
    return KINDS[kind]


def json_schema() -> dict:
    """JSON Schema of every experiment kind (for editors), with the registered names."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "transformer-flows experiment config",
        "oneOf": [],
        "$defs": {},
    }
    for kind, model in KINDS.items():
        part = model.model_json_schema(ref_template="#/$defs/{model}")
        schema["$defs"].update(part.pop("$defs", {}))
        part["properties"]["experiment"] = {
            "const": kind,
            **({"default": kind} if kind == "simulation" else {}),
        }
        schema["$defs"][model.__name__] = part
        schema["oneOf"].append({"$ref": f"#/$defs/{model.__name__}"})
    _name_hints(schema["$defs"])
    registries = {
        "fields": FIELDS.names(),
        "solvers": SOLVERS.names(),
        "weights": WEIGHTS.names(),
        "observables": OBSERVABLES.names(),
        "figures": FIGURES.names(),
        "tasks": TASKS.names(),
        "interactions": INTERACTIONS.names(),
    }
    schema["x-registered-names"] = registries
    return schema


def _name_hints(definitions: dict) -> None:
    """Registered names as enums where a config takes a name, so editors complete them; the
    field accepts an import path `module:Class` too; a task is one of the registered kinds."""
    field_name = {"anyOf": [{"enum": FIELDS.names()}, {"type": "string", "pattern": r"^\S+:\w+$"}]}
    for model in ("ModelConfig", "FitModelConfig"):
        definitions[model]["properties"]["field"].update(field_name)
    definitions["SolverConfig"]["properties"]["name"]["enum"] = SOLVERS.names()
    definitions["ModelConfig"]["properties"]["weights"]["items"]["enum"] = WEIGHTS.names()
    definitions["ObservablesConfig"]["properties"]["names"]["items"]["enum"] = OBSERVABLES.names()
    definitions["PretrainedConfig"]["properties"]["statistics"]["items"]["enum"] = [
        name for name in OBSERVABLES if not OBSERVABLES[name].dims and OBSERVABLES[name].d is None
    ]
    for kind, model in KINDS.items():
        figures = [name for name in FIGURES if FIGURES[name].experiment == kind]
        definitions[model.__name__]["properties"]["figures"]["items"]["enum"] = figures
    tasks = []
    for kind in TASKS:
        part = TASKS[kind].schema.model_json_schema(ref_template="#/$defs/{model}")
        definitions.update(part.pop("$defs", {}))
        part["properties"] = {"kind": {"const": kind}, **part["properties"]}
        part["required"] = ["kind", *part.get("required", [])]
        part["title"] = f"task {kind}"
        tasks.append(part)
    definitions["TaskConfig"] = {"title": "TaskConfig", "oneOf": tasks}


# --- reading configs -----------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = (), *, smoke: bool = False):
    """Read a YAML config, apply its `smoke:` overrides (if `smoke`) then `overrides`, validate.
    Raises `ConfigError` (never a traceback from inside) on any bad input."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (or is not a file).")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(
                f"config file {str(path)!r} is {path.stat().st_size} bytes; configs are "
                f"limited to {MAX_YAML_BYTES}"
            )
        raw = load_yaml(path.read_text(), f"config file {str(path)!r}")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return config_from_dict(raw, overrides, smoke=smoke, default_name=path.stem)


def config_from_dict(
    raw: Any,
    overrides: Sequence[str] = (),
    *,
    smoke: bool = False,
    default_name: str = "experiment",
):
    """Validate a config mapping (after `smoke:` and `key=value` overrides) into a
    `SimulationConfig`, `TheoryConfig` or `FitConfig`."""
    from ._overrides import apply_overrides

    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a config must be a YAML mapping at the top level, got {raw!r}. Fix: start from "
            "one of configs/*.yaml."
        )
    raw = dict(raw)
    kind = _kind_of(raw)
    smoke_overrides = raw.get("smoke") or {}
    if not isinstance(smoke_overrides, Mapping):
        raise ConfigError(
            "config key `smoke`: must map key paths to values, e.g. {sweep.starts: 4}, got "
            f"{smoke_overrides!r}."
        )
    try:
        bounded_free_form(smoke_overrides)
    except ValueError as err:
        raise ConfigError(f"config key `smoke`: {err}.") from None
    if smoke:
        raw = apply_overrides(
            raw, [f"{key}={json.dumps(value)}" for key, value in smoke_overrides.items()], kind
        )
    raw = apply_overrides(raw, list(overrides), _kind_of(raw))
    kind = _kind_of(raw)
    try:
        config = kind.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, raw)) from None
    if config.name is None:
        config = config.model_copy(update={"name": default_name})
    config._smoke_run = bool(smoke)
    return config


def import_fields(config):
    """The config validated again with the `module:Class` it names imported (the checks that
    need the class: its parameters, placements, state), or the config itself if it names no
    import path. Called by `run_experiment` only, after the config validated without imports.
    Refused when TRANSFORMER_FLOWS_NO_IMPORTS is set."""
    model = getattr(config, "model", None)
    if model is None or not FIELDS.is_import_path(getattr(model, "field", None)):
        return config
    try:
        with allow_imports():
            validated = type(config).model_validate(config.resolved())
    except ValidationError as err:
        raise ConfigError(_explain(err, config.resolved())) from None
    validated._smoke_run = config.smoke_run
    return validated


def _location(loc: Sequence) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-", "lax-", "json-", "literal[")) or part in (
            "list[...]",
        ):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "<top level>"


def _explain(error: ValidationError, raw: Mapping) -> str:
    """Every pydantic error as: key path, the value given, what is wrong/allowed, the fix."""
    lines = []
    for item in error.errors(include_url=False):
        path = _location(item["loc"])
        message = item["msg"].removeprefix("Value error, ").rstrip(".")
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _location(item["loc"][:-1])
            allowed = _allowed_keys(raw, item["loc"][:-1])
            lines.append(
                f"config key `{path}`: unknown key. Allowed keys "
                f"{'here' if parent == '<top level>' else 'in ' + parent}: {allowed}. Fix: "
                "correct the spelling or remove it."
            )
            continue
        if kind == "missing":
            lines.append(
                f"config key `{path}`: is required. Fix: add it to the config or pass "
                f"`{path}=VALUE`."
            )
            continue
        value = item.get("input")
        leading = _LEADING_KEY.match(message)
        if leading and kind == "value_error":
            # A check across keys names the key it is about first ("params.gain: ...").
            relative, message = leading.groups()
            path = relative if path == "<top level>" else f"{path}.{relative}"
            value = _lookup(raw, path)
        elif _is_section(raw, item["loc"]):
            # A check across the keys of a section: its message names them and the fix.
            lines.append(f"config section `{path}`: {message}.")
            continue
        shown = "" if value is _MISSING else f" got {value!r};"
        lines.append(
            f"config key `{path}`:{shown} {message}. Fix: edit `{path}` in the config or "
            f"override it with `{path}=VALUE`."
        )
    head = "invalid config" + (f" ({len(lines)} errors)" if len(lines) > 1 else "")
    return head + ":\n  " + "\n  ".join(lines)


_LEADING_KEY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): (.*)$", re.DOTALL)
_MISSING = object()


def _lookup(raw: Any, path: str) -> Any:
    """The value at a dotted key path of the raw config (_MISSING if absent)."""
    node = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_section(raw: Mapping, loc: Sequence) -> bool:
    """Whether `loc` names a section (a model) rather than a value."""
    if not loc:
        return True
    model = _kind_of(raw)
    for part in loc:
        if isinstance(part, int) or model is None:
            return False
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = _model_in(field.annotation)
    return model is not None


def _allowed_keys(raw: Mapping, loc: Sequence) -> list[str]:
    model = _kind_of(raw)
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        annotation = getattr(field, "annotation", None)
        model = _model_in(annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (X, X | None, Annotated[X, ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        found = _model_in(argument)
        if found is not None:
            return found
    return None
