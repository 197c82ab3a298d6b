"""The config schema of `fit`: the trained model, the task, the optimisation and the flow."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from ._registry import FIELDS, TASKS
from ._schema_core import (
    FieldName,
    NonNegativeInteger,
    NonNegativeNumber,
    PositiveInteger,
    PositiveNumber,
    Precision,
    Seed,
    SolverConfig,
    _Experiment,
    _integer_type,
    _location,
    _Section,
)
from ._yaml import bounded_free_form

# --- fits ----------------------------------------------------------------------------------


def _has_analytic_vjp(cls) -> bool:
    """Whether fits of `cls` are built with a dense attention that `flow.attention_vjp:
    analytic` replaces by AnalyticVJPAttention (those `build_fit_model` builds: SA, USA)."""
    from .._field._self_attention import SelfAttention, UnnormalizedSelfAttention

    return cls in (SelfAttention, UnnormalizedSelfAttention)


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
    d: _integer_type(ge=2) = Field(description="token dimension d (>= 2)")
    heads: PositiveInteger | None = Field(
        None, description="H heads: weights (H, d, d), summed; null: one head"
    )
    layers: PositiveInteger | None = Field(
        None,
        description="L layers of weights, piecewise constant over [0, flow.horizon]; null: one",
    )
    rank: PositiveInteger | None = Field(
        None, description="low-rank factors W = A Bᵀ of rank r <= d; null: full matrices"
    )
    init_scale: PositiveNumber = Field(
        1.0, description="random weights have entries N(0, init_scale²/d)"
    )
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
    kind: str = Field(description="a registered fit task: labeled, partition, measure")

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
    """The optimisation (optax): steps, batches, optimiser, schedule, evaluation."""

    parameters: list[str] = Field(
        ["Q", "K", "V", "beta"],
        description="parameters of the field that train (feed_forward: w, a, b of "
        "model.feed_forward)",
    )
    steps: NonNegativeInteger = Field(description="optimizer steps (0: evaluate and plot only)")
    batch_size: PositiveInteger = Field(16, description="random inputs per step")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam or sgd")
    learning_rate: PositiveNumber = Field(description="peak learning rate (> 0)")
    schedule: Literal["constant", "cosine", "warmup_cosine"] = Field(
        "constant",
        description="constant, cosine (decay over steps) or warmup_cosine (needs warmup_steps)",
    )
    warmup_steps: NonNegativeInteger = Field(0, description="linear warm-up steps (warmup_cosine)")
    clip_norm: PositiveNumber | None = Field(None, description="global-norm clipping (> 0)")
    eval_every: NonNegativeInteger = Field(
        0, description="held-out evaluation every k steps (always at 0 and at the end)"
    )
    eval_size: PositiveInteger = Field(64, description="held-out inputs per evaluation")
    checkpoint_every: NonNegativeInteger = Field(
        0, description="write checkpoint.eqx every k steps (0: only at the end)"
    )


# Bounds of `flow.stored_max_steps` (adjoint `stored` computes and keeps every one of its steps,
# each with its stage values and attention weights): at most this many steps, and at most this
# many bytes of stored states alone (steps x batch x n x d values; the stage values and attention
# weights kept beside them are several times more), so that an oversized value is refused here
# instead of failing on memory allocation in the first training step.
STORED_MAX_STEPS_LIMIT = 65_536
STORED_STATE_BYTES_LIMIT = 16 * 2**30


class FlowConfig(_Section):
    """The flow differentiated by the fit: its final time and how its gradient is computed."""

    horizon: PositiveNumber = Field(description="final time T of the flow (> 0)")
    adjoint: Literal["recursive_checkpoint", "backsolve", "stored"] = Field(
        "recursive_checkpoint",
        description="recursive_checkpoint (discretise-then-differentiate), backsolve "
        "(continuous adjoint, O(1) memory; not with fixed-step sphere solvers) or stored "
        "(StoredAdjoint: the same exact gradient with nothing recomputed; needs "
        "flow.stored_max_steps)",
    )
    checkpoints: PositiveInteger | None = Field(
        None, description="RecursiveCheckpointAdjoint(checkpoints=...); null: diffrax's default"
    )
    stored_max_steps: PositiveInteger | None = Field(
        None,
        description="with adjoint: stored (required there, refused otherwise): the solver "
        "steps stored per solve, the step bound of the fit's solves in place of "
        "solver.max_steps. Every one of them is computed and kept, so size it just above the "
        "steps a solve takes; a solve that needs more stops the fit with an error naming this "
        "key (never a truncated solve or a silent number). At most 65536, and at most 16 GiB "
        "of stored states (steps x train.batch_size x task.n x model.d values)",
    )
    attention_vjp: Literal["autodiff", "analytic"] = Field(
        "autodiff",
        description="autodiff (JAX differentiates the attention) or analytic "
        "(AnalyticVJPAttention: dense attention with its hand-written backward, the same "
        "gradient to rounding; SA and USA fields only)",
    )

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # Fit configs written before these keys existed keep their saved form (and
        # fingerprint), so their output directories still resume.
        data = handler(self)
        if data.get("stored_max_steps") is None:
            data.pop("stored_max_steps", None)
        if data.get("attention_vjp") == "autodiff":
            data.pop("attention_vjp", None)
        return data

    @model_validator(mode="after")
    def _stored_steps(self):
        if self.adjoint == "stored" and self.stored_max_steps is None:
            raise ValueError(
                "stored_max_steps: adjoint 'stored' keeps every solver step, so it needs their "
                "number; set flow.stored_max_steps just above the steps a solve takes (e.g. "
                "16; a forward solve's trajectory.stats['num_steps'] says how many)"
            )
        if self.stored_max_steps is not None and self.stored_max_steps > STORED_MAX_STEPS_LIMIT:
            raise ValueError(
                f"stored_max_steps: above its cap {STORED_MAX_STEPS_LIMIT}: "
                "adjoint 'stored' computes and keeps every one of these steps with its stage "
                "values. Set flow.stored_max_steps just above the steps a solve takes (a forward "
                "solve's trajectory.stats['num_steps']), or for solves of that many steps use "
                "flow.adjoint: recursive_checkpoint (bounded by solver.max_steps)"
            )
        if self.adjoint != "stored" and self.stored_max_steps is not None:
            raise ValueError(
                f"stored_max_steps = {self.stored_max_steps} is the size of adjoint 'stored'; "
                f"with adjoint {self.adjoint!r} the bound is solver.max_steps. Remove "
                "flow.stored_max_steps or set flow.adjoint: stored"
            )
        if self.adjoint == "stored" and self.checkpoints is not None:
            raise ValueError(
                f"checkpoints = {self.checkpoints} configures adjoint 'recursive_checkpoint'; "
                "adjoint 'stored' keeps every step. Remove flow.checkpoints"
            )
        return self


class FitConfig(_Experiment):
    """Fit Q, K, V and/or β by differentiating through the flow."""

    experiment: Literal["fit"]
    seed: Seed = Field(
        0, description="seed of the initial weights, training batches, held-out inputs, task points"
    )
    precision: Precision = Field(
        "float32", description="float dtype of the weights and the solve: float32 or float64"
    )
    model: FitModelConfig = Field(description="the trained model")
    task: TaskConfig = Field(description="what the flow must do: kind and that task's keys")
    train: TrainConfig = Field(description="the optimisation")
    flow: FlowConfig = Field(description="the flow's final time and adjoint")
    solver: SolverConfig = Field(
        SolverConfig(rtol=1e-4, atol=1e-4, max_steps=4096),
        description="how the flow is integrated",
    )

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
        self.solver.require_step("fit")
        if self.train.schedule == "warmup_cosine" and self.train.warmup_steps < 1:
            raise ValueError("schedule warmup_cosine needs train.warmup_steps >= 1")
        self._stored_memory()
        entry = FIELDS.lookup(self.model.field)
        if self.flow.attention_vjp == "analytic" and (
            entry is None or not _has_analytic_vjp(entry.cls)
        ):
            field = "is another field" if entry is None else f"({entry.cls.__name__}) has none"
            raise ValueError(
                f"flow.attention_vjp: 'analytic' is the backward of SA and USA attention; "
                f"model.field {self.model.field!r} {field}. Use flow.attention_vjp: autodiff"
            )
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
        return self

    def _stored_memory(self) -> None:
        """Refuse adjoint `stored` when the states it keeps alone exceed
        STORED_STATE_BYTES_LIMIT (with a task whose inputs have `n` tokens: all built-in)."""
        steps = self.flow.stored_max_steps
        n = getattr(self.task.spec(), "n", None)
        if steps is None or not isinstance(n, int):
            return
        itemsize = 8 if self.precision == "float64" else 4
        batch, d = self.train.batch_size, self.model.d
        size = steps * batch * n * d * itemsize
        if size > STORED_STATE_BYTES_LIMIT:
            raise ValueError(
                "flow.stored_max_steps: too many steps to store: adjoint 'stored' keeps every "
                f"step's state, {steps} steps x train.batch_size {batch} x task.n {n} x "
                f"model.d {d} "
                f"{self.precision} values = {size / 2**30:.1f} GiB before the stage values "
                f"and attention weights stored with them (the limit is "
                f"{STORED_STATE_BYTES_LIMIT // 2**30} GiB); set it just above the steps a "
                "solve takes, or use a smaller train.batch_size or flow.adjoint: "
                "recursive_checkpoint"
            )
