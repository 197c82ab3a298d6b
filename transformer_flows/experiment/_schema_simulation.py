"""The config schema of `simulation` sweeps: the model, the sweep's axes, the save times,
the observables."""

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ._registry import FIELDS, FIGURES, OBSERVABLES, PLACEMENTS, SOLVERS, WEIGHTS
from ._schema_core import (
    _DISTINCT,
    FieldName,
    Grid,
    Number,
    PositiveInteger,
    PositiveNumber,
    Seed,
    ShapeList,
    SolverConfig,
    _Experiment,
    _integer_type,
    _listed,
    _number_type,
    _registered,
    _Section,
    _unique,
)
from ._schema_fit import FeedForwardConfig
from ._yaml import bounded_free_form

# --- simulation sweeps ---------------------------------------------------------------------

# The parameters of each noise kind (transformer_flows/_noise.py); fixed under model.noise or
# swept under sweep.params.
NOISE_PARAMETERS = {"independent": ("kappa",), "common": ("sigma",), "sum": ("kappa", "sigma")}


def _refuse_unknown(key: str, given, allowed: set[str], owners: str) -> None:
    """Every name under `key` is a parameter some of `owners` declares."""
    for name in given:
        if name not in allowed:
            raise ValueError(
                f"{key}.{name}: not a parameter of {owners}; allowed: {sorted(allowed)}"
            )


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
    n: Annotated[ShapeList, _DISTINCT] = Field(
        description="tokens n >= 2: one number or a list (each value compiles its own program)"
    )
    d: Annotated[ShapeList, _DISTINCT] = Field(
        description="token dimension d >= 2 (tokens on the sphere S^{d-1}): one number or a "
        "list (each value compiles its own program)"
    )
    weights: Annotated[_listed(str), _registered(WEIGHTS)] = Field(
        ["identity"],
        description="identity (Q = K = V = I) or random ensembles query_key:value drawn per "
        "start; a list is one more axis of the sweep",
    )
    heads: Annotated[_listed(_integer_type(ge=1)), _DISTINCT] | None = Field(
        None,
        description="H heads of random weights (H, d, d): one number or a list (each value "
        "compiles its own program; dataset coordinate `heads`); null: one head",
    )
    layers: Annotated[_listed(_integer_type(ge=1)), _DISTINCT] | None = Field(
        None,
        description="L per-layer random weights, piecewise constant over [0, t1]: one number "
        "or a list (each value compiles its own program; dataset coordinate `layers`); null: "
        "one layer",
    )
    initial: Annotated[_listed(Literal["sphere", "hemisphere", "orthonormal"]), _DISTINCT] = Field(
        ["sphere"],
        description="start(s): uniform on the sphere, on a hemisphere, or a random orthonormal "
        "frame (d >= n); a list is one more axis of the sweep",
    )
    placement: Annotated[_listed(str), _registered(PLACEMENTS)] = Field(
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
    feed_forward: FeedForwardConfig | None = Field(
        None,
        description="a feed-forward term w σ(a x + b) beside the attention: the sweep solves "
        "TransformerBlock(field, FeedForward), its weights drawn per start (a, b ~ N(0, 1), "
        "w ~ N(0, init_scale²/width); per layer with model.layers); null: attention only",
    )

    @field_validator("n", "d", "initial", "heads", "layers")
    @classmethod
    def _unique_shapes(cls, values):
        return values if values is None else _unique(values)

    @property
    def head_counts(self) -> list[int | None]:
        """The swept head counts H (None: no head axis, one head)."""
        return list(self.heads) if self.heads else [None]

    @property
    def layer_counts(self) -> list[int | None]:
        """The swept depths L (None: no layer axis, weights constant in time)."""
        return list(self.layers) if self.layers else [None]

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
        if data.get("feed_forward", 0) is None:
            data.pop("feed_forward")
        if isinstance(data.get("initial"), list) and len(data["initial"]) == 1:
            data["initial"] = data["initial"][0]
        # One H or L is saved as a number, as before they were axes (the same fingerprint).
        for key in ("heads", "layers"):
            if isinstance(data.get(key), list) and len(data[key]) == 1:
                data[key] = data[key][0]
        return data

    @model_validator(mode="after")
    def _placements(self):
        entry = FIELDS.lookup(self.field)
        if entry is None:  # an import path: checked by run_experiment, after importing it
            return self
        wrapped = [p for p in self.placement if PLACEMENTS[p].wrap is not None]
        if wrapped and (entry.state != "points" or entry.euclidean):
            moves = "angles" if entry.state == "angles" else "tokens in R^d"
            raise ValueError(
                f"placement: {wrapped} wrap a sphere field; {self.field!r} moves {moves}"
            )
        _refuse_unknown(
            "placement_params",
            self.placement_params,
            {name for p in self.placement for name in PLACEMENTS[p].parameters},
            f"the placements {self.placement}",
        )
        for name in wrapped:
            placement = PLACEMENTS[name]
            params = {k: v for k, v in self.placement_params.items() if k in placement.parameters}
            if name == "mix_ln" and self.layers and "layer_duration" not in params:
                # The sweep gives the field per-layer weights of duration t1/layers.
                if not 0 <= params.get("post_ln_layers", 0) <= min(self.layers):
                    raise ValueError(
                        f"placement_params.post_ln_layers: must lie in [0, model.layers = "
                        f"{min(self.layers)}], got {params.get('post_ln_layers')!r}"
                    )
                params = {**params, "layer_duration": 1.0}
            try:
                placement.wrap(entry.build(1.0, self.params), **params)
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
        if "beta" not in parameters and not entry.beta_free:
            raise ValueError(
                f"field {self.field!r} has no parameter `beta`, which sweep.beta sets (a "
                "β-free class registers as FieldEntry(cls, beta_free=True))"
            )
        _try_build(entry, self.params, "params")
        self._stacked_weights(entry)
        self._feed_forward_checks(entry)
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
        _refuse_unknown(
            "weights_params",
            self.weights_params,
            {name for w in self.weights for name in WEIGHTS[w].parameters},
            f"the weight ensembles {self.weights}",
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

    def _feed_forward_checks(self, entry) -> None:
        """A feed-forward term makes the field TransformerBlock(field, FeedForward): it needs a
        sphere field solved as it is (Post-LN, no noise)."""
        if self.feed_forward is None:
            return
        if entry.state != "points" or entry.euclidean:
            raise ValueError(
                f"feed_forward: TransformerBlock adds w σ(a x + b) to a sphere field; "
                f"{self.field!r} moves {'angles' if entry.state == 'angles' else 'tokens in R^d'}"
                ": use a sphere field such as SA, or remove model.feed_forward"
            )
        wrapped = [p for p in self.placement if PLACEMENTS[p].wrap is not None]
        if wrapped or self.noise is not None:
            raise ValueError(
                "feed_forward: blocks are swept as Post-LN ODEs only (placement post_ln, no "
                f"model.noise); got placement {self.placement}, noise "
                f"{None if self.noise is None else self.noise.kind!r}: remove one of them"
            )

    def _stacked_weights(self, entry) -> None:
        """model.heads and model.layers give the field stacked weights (layers, heads, d, d):
        a field that takes one matrix each (HardmaxAttention) refuses them here, not after
        compiling."""
        stack = tuple(sizes[0] for sizes in (self.layers, self.heads) if sizes)
        if not stack or not entry.takes_weights:
            return
        d = self.d[0]
        weights = {name: np.zeros((*stack, d, d)) for name in "QKV"}
        options = {"layer_duration": 1.0} if self.layers else {}
        try:
            entry.build(1.0, self.params, **weights, **options)
        except Exception as err:  # the field's own message names the argument
            raise ValueError(
                f"heads/layers: {entry.cls.__name__} refuses weights stacked as "
                f"(layers, heads, d, d) = {(*stack, d, d)}: {err} Remove model.heads and "
                "model.layers"
            ) from None


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
        entry.build(1.0, params)
    except Exception as err:  # the field's own message names the parameter
        beta = "" if entry.beta_free else "beta=1.0, "
        raise ValueError(
            f"{where}: {entry.cls.__name__}({beta}**{params}) is refused: {err}"
        ) from None


class SweepConfig(_Section):
    """The axes swept in one vmapped program: β, random starts, tolerances, parameters."""

    beta: Annotated[Grid, _DISTINCT] | None = Field(
        None,
        description="inverse temperature β of the attention: one number, a list, or {start, "
        "stop, num} (inclusive linspace); each value once. Required, except for β-free "
        "fields (Hardmax, the β → ∞ limit), which refuse it",
    )
    starts: PositiveInteger = Field(
        description="random initial configurations per β (the same starts and weight draws "
        "for every β: common random numbers)"
    )
    seed: Seed = Field(0, description="seed of the starts and weight draws (0 <= seed < 2^63)")
    tolerance: Annotated[_listed(PositiveNumber, min_length=0), _DISTINCT] | None = Field(
        None, description="rtol = atol axis of an adaptive solver"
    )
    chunk_size: PositiveInteger | Literal["auto"] = Field(
        "auto",
        description="solves per vmapped call; auto: sized from memory_budget_mb per shape",
    )
    memory_budget_mb: PositiveNumber = Field(
        256.0, description="memory per chunk in MB, sizes chunk_size=auto"
    )
    params: dict[str, Annotated[Grid, _DISTINCT]] = Field(
        {}, description="axes over scalar field parameters, e.g. {gain: [0.5, 2.0]}"
    )

    @field_validator("beta")
    @classmethod
    def _beta(cls, values):
        # β < 0 (repulsive softmax) is valid for the fields; fields whose figures and
        # summaries draw theory curves refuse it in SimulationConfig's cross-checks.
        return None if values is None else _unique(values)

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # A β-free sweep has no sweep.beta; the others keep their saved form (and fingerprint).
        data = handler(self)
        if data.get("beta", 0) is None:
            data.pop("beta")
        return data

    @property
    def betas(self) -> list[float]:
        """The β axis: sweep.beta, or [+inf] for a β-free field (the β → ∞ limit)."""
        return [math.inf] if self.beta is None else list(self.beta)

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, values):
        return None if values is None else _unique(values)

    @field_validator("params")
    @classmethod
    def _params(cls, params):
        for name, values in params.items():
            _unique(values)
            if name in ("beta", "start", "rtol", "time", "n", "d", "heads", "layers", "weights"):
                raise ValueError(f"params.{name}: {name!r} is a dimension of the sweep already")
        return params


class TimeConfig(_Section):
    """Save times linspace(0, t1, num)."""

    t1: PositiveNumber = Field(description="final time of the flow (> 0)")
    num: _integer_type(ge=2) = Field(description="save times, evenly spaced on [0, t1] (>= 2)")

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t1, self.num)


class ObservablesConfig(_Section):
    """Statistics saved at every save time (registered observables)."""

    names: Annotated[_listed(str), _registered(OBSERVABLES)] = Field(
        ["clustered_fraction"], description="registered observables (one name or a list)"
    )
    delta: _number_type(gt=0, lt=2) = Field(
        1e-3, description="clustering threshold δ: tokens i, j are close if <x_i, x_j> >= 1 - δ"
    )
    harmonic: PositiveInteger = Field(
        1, description="harmonic k of order_parameter |mean_j e^{i k θ_j}| (d = 2)"
    )


class SimulationConfig(_Experiment):
    """Particles integrated by `solve` over a grid of β, starts, weights, shapes, parameters."""

    experiment: Literal["simulation"] = "simulation"
    model: ModelConfig = Field(description="the vector field and the shapes n, d")
    sweep: SweepConfig = Field(description="the axes of the sweep: β, starts, parameters")
    time: TimeConfig = Field(description="save times linspace(0, t1, num)")
    solver: SolverConfig = Field(SolverConfig(), description="how the flow is integrated")
    observables: ObservablesConfig = Field(
        ObservablesConfig(), description="statistics saved at every save time"
    )

    @model_validator(mode="after")
    def _cross_checks(self):
        model, names = self.model, self.observables.names
        # None for an import path: its checks run in run_experiment, after importing it.
        entry = FIELDS.lookup(model.field)
        self._beta_checks(entry)
        negative = [beta for beta in self.sweep.betas if beta < 0]
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
            for axis in needs.axes:
                values = getattr(model, axis)
                if not values or len(values) < 2:
                    got = values[0] if values else None
                    raise ValueError(
                        f"figure {figure!r} draws against model.{axis}: it needs a list of at "
                        f"least two values there, got model.{axis} = {got!r}; give several, "
                        f"e.g. model.{axis}=[4, 8, 16]"
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
        self._layer_step_checks()
        if not self.solver.adaptive and self.solver.dt is not None:
            steps = math.ceil(self.time.t1 / self.solver.dt - 1e-9)
            if steps > self.solver.max_steps:
                raise ValueError(
                    f"the fixed step dt={self.solver.dt} needs {steps} steps to reach "
                    f"t1={self.time.t1}: raise solver.max_steps above {self.solver.max_steps}"
                )
        return self

    def _layer_step_checks(self) -> None:
        """A layered solver (residual_layers) with model.layers steps one layer per step:
        dt = t1/L for every swept L. `solver.dt: null` sets that step per shape; a given
        solver.dt must equal it (one L), else the solve would not be the L-layer network."""
        solver, layers, t1 = self.solver, self.model.layers, self.time.t1
        if not SOLVERS[solver.name].layered:
            return
        if solver.dt is None:
            if not layers:
                raise ValueError(
                    f"solver.dt: null means one step per layer (t1/model.layers) for "
                    f"{solver.name!r}, but model.layers is not set: set solver.dt (e.g. "
                    "solver.dt=0.1) or model.layers"
                )
            if math.ceil(max(layers) - 1e-9) > solver.max_steps:
                raise ValueError(
                    f"model.layers = {max(layers)} layers need as many steps: raise "
                    f"solver.max_steps above {solver.max_steps}"
                )
            return
        if not layers:
            return
        wrong = [L for L in layers if not math.isclose(solver.dt, t1 / L, rel_tol=1e-9)]
        if wrong:
            fix = (
                f"set solver.dt={t1 / layers[0]:g}"
                if len(layers) == 1
                else "remove it (solver.dt=null), the step then follows t1/L per depth"
            )
            raise ValueError(
                f"solver.dt = {solver.dt:g}: {solver.name!r} with model.layers = {layers} "
                f"steps one layer per step, dt = t1/L, which is not {solver.dt:g} for L = "
                f"{wrong} (t1 = {t1:g}): {fix}"
            )

    def _beta_checks(self, entry) -> None:
        """sweep.beta is given exactly when the field takes β (β-free: the β → ∞ limit)."""
        model, sweep = self.model, self.sweep
        if entry is not None and entry.beta_free:
            if sweep.beta is not None:
                raise ValueError(
                    f"sweep.beta: field {model.field!r} ({entry.cls.__name__}) is β-free (the "
                    "β → ∞ limit of attention; its β coordinate is +inf): remove sweep.beta, "
                    f"got {sweep.beta}"
                )
            reads_beta = [n for n in self.observables.names if OBSERVABLES[n].reads_beta]
            if reads_beta:
                raise ValueError(
                    f"observables.names: {reads_beta} read β, which field {model.field!r} "
                    "does not have: remove them"
                )
        elif sweep.beta is None:
            raise ValueError(
                f"sweep.beta: field {model.field!r} takes β: give sweep.beta (one number, a "
                "list or {start, stop, num})"
            )
        if entry is None or not entry.euclidean:
            return
        if model.noise is not None:
            raise ValueError(
                f"model.noise: noise is defined on the sphere; field {model.field!r} moves "
                "tokens in R^d: remove model.noise"
            )
        solver = SOLVERS[self.solver.name]
        if solver.points_only and not solver.euclidean:
            fit = [n for n in SOLVERS if SOLVERS[n].euclidean or not SOLVERS[n].points_only]
            raise ValueError(
                f"solver.name: {self.solver.name!r} steps points on the sphere; field "
                f"{model.field!r} moves tokens in R^d: choose one of {fit}"
            )

    def _weights_checks(self, entry) -> None:
        """Parameterised ensembles (their shapes, swept values) and observables that read the
        attention field's heads."""
        model = self.model
        for w in model.weights:
            weights = WEIGHTS[w]
            if weights.check is not None:
                for heads in model.head_counts:
                    for layers in model.layer_counts:
                        weights.check(model.d, heads or 1, layers or 1, self.time.t1)
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
            if min(model.heads or [1]) < 2 or random != model.weights:
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
