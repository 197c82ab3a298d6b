"""Where config names become objects: fields, solvers, weight draws, fit models, tasks,
flows and optimizers, all looked up in the registries."""

from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._registry import FIELDS, SOLVERS, TASKS, WEIGHTS, FieldEntry
from ._schema import ConfigError, FitConfig, SolverConfig


def dtype_of(precision: str):
    """The float dtype of a config's `precision` (float64 needs JAX's 64-bit mode)."""
    if precision == "float64":
        if not jax.config.jax_enable_x64:
            raise ConfigError(
                "config key `precision`: 'float64' needs JAX's 64-bit mode; call "
                "jax.config.update('jax_enable_x64', True) first (the CLI does) or set "
                "precision=float32."
            )
        return jnp.float64
    return jnp.float32


def field_entry(name: str) -> FieldEntry:
    return FIELDS.resolve(name)


def solver_of(config: SolverConfig) -> tuple[diffrax.AbstractSolver, float | None]:
    """(the diffrax solver, dt0): adaptive solvers choose their steps, the others take dt."""
    entry = SOLVERS[config.name]
    return entry.make(), (None if entry.adaptive else config.dt)


def weight_draws(names: tuple[str, ...]):
    """The `draw(key, d, dtype)` functions of random weight ensembles."""
    return [WEIGHTS[name].draw for name in names]


def build_field(entry: FieldEntry, beta, params: dict[str, Any], weights=None, **options):
    """`entry.cls(beta=beta, **params, Q=, K=, V=, **options)` (no β for a β-free entry);
    weights (Q, K, V) may hold None (the identity)."""
    if weights is not None:
        options = {**options, **dict(zip("QKV", weights, strict=True))}
    return entry.build(beta, params, **options)


def build_noise(spec, values: dict[str, Any]):
    """The noise of `model.noise` (None: an ODE), its parameters from the section or, when
    swept, from `values` (name → the chunk's traced value)."""
    from .._noise import CommonNoise, IndependentNoise

    if spec is None:
        return None
    value = {name: values.get(name, getattr(spec, name)) for name in spec.parameters}
    parts = []
    if "kappa" in value:
        parts.append(IndependentNoise(value["kappa"]))
    if "sigma" in value:
        parts.append(CommonNoise(value["sigma"]))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


# --- fits ----------------------------------------------------------------------------------


def build_fit_model(config: FitConfig):
    """The initial model of a fit. Attention fields (SA, USA): random Gaussian
    N(0, init_scale²/d) weights fixed by `seed`, with heads, layers and low rank as configured
    (names in `model.identity` stay None, i.e. the identity), and the feed-forward term of
    `model.feed_forward` if set (per layer with `model.layers`; its weights from a key of its
    own, so Q, K, V start as without it), attending with `AnalyticVJPAttention()` when
    `flow.attention_vjp` is `analytic`. Other fields: `cls(**params)`."""
    from .._attention import AutoAttention
    from .._attention_vjp import AnalyticVJPAttention
    from .._field._self_attention import SelfAttention, UnnormalizedSelfAttention
    from .._field_models import LowRank, LowRankAttention

    spec = config.model
    entry = FIELDS.resolve(spec.field)
    params = dict(spec.params)
    dtype = dtype_of(config.precision)
    if entry.cls not in (SelfAttention, UnnormalizedSelfAttention):
        model = entry.cls(**params)
    else:
        d, heads, layers, rank = spec.d, spec.heads, spec.layers, spec.rank
        lead = (() if layers is None else (layers,)) + (() if heads is None else (heads,))
        scale = float(spec.init_scale / np.sqrt(d))  # a Python float: keeps `dtype`
        keys = dict(zip("QKV", jax.random.split(jax.random.key(config.seed), 3), strict=True))

        def weight(name):
            if name in spec.identity:
                return None
            if name in spec.start_at_identity:
                return jnp.broadcast_to(jnp.eye(d, dtype=dtype), (*lead, d, d))
            if rank is None:
                return scale * jax.random.normal(keys[name], (*lead, d, d), dtype=dtype)
            left_key, right_key = jax.random.split(keys[name])
            # left @ rightᵀ has entries of variance rank·(scale²/sqrt(d))², i.e. scale²·rank/d.
            factor = float(np.sqrt(scale / np.sqrt(rank)))
            return LowRank(
                factor * jax.random.normal(left_key, (*lead, d, rank), dtype=dtype),
                factor * jax.random.normal(right_key, (*lead, d, rank), dtype=dtype),
            )

        layer_duration = None if layers is None else config.flow.horizon / layers
        beta = params.pop("beta", 1.0)
        if params:
            raise ConfigError(
                f"config key `model.params`: {sorted(params)} are not set by fits of "
                f"{spec.field} (only beta); remove them."
            )
        model = LowRankAttention(
            jnp.asarray(beta, dtype),
            weight("Q"),
            weight("K"),
            weight("V"),
            normalized=entry.cls is SelfAttention,
            layer_duration=layer_duration,
            feed_forward=_feed_forward(spec, layer_duration, config),
            attention=AnalyticVJPAttention()
            if config.flow.attention_vjp == "analytic"
            else AutoAttention(),
        )
    # Strong dtypes (β = 1.0 would be weakly typed), as `fit` returns them: one compilation
    # serves the initial and the fitted model.
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(leaf, dtype=dtype) if _is_inexact(leaf) else leaf, model
    )


def _feed_forward(spec, layer_duration, config):
    """The initial `FeedForward` of `model.feed_forward` (None if unset), drawn from a key of
    its own (`feed_forward`)."""
    if spec.feed_forward is None:
        return None
    return feed_forward(
        spec.feed_forward,
        jax.random.fold_in(jax.random.key(config.seed), 1),
        spec.d,
        spec.layers,
        layer_duration,
        dtype_of(config.precision),
    )


def feed_forward(ff, key, d: int, layers: int | None, layer_duration, dtype):
    """A `FeedForward` drawn from `key` as `FeedForwardConfig` `ff` says: a, b ~ N(0, 1),
    w ~ N(0, init_scale²/m), with a leading layer axis L when `layers` is set (fits: the
    initial model; sweeps: the feed-forward term of a `TransformerBlock`, drawn per start)."""
    from .._field._feed_forward import FeedForward

    m = d if ff.width is None else ff.width
    lead = () if layers is None else (layers,)
    w_key, a_key, b_key = jax.random.split(key, 3)
    scale = float(ff.init_scale / np.sqrt(m))
    return FeedForward(
        scale * jax.random.normal(w_key, (*lead, d, m), dtype=dtype),
        jax.random.normal(a_key, (*lead, m, d), dtype=dtype),
        jax.random.normal(b_key, (*lead, m), dtype=dtype) if ff.bias else None,
        activation=ff.activation,
        layer_duration=layer_duration,
    )


def _is_inexact(leaf) -> bool:
    return isinstance(leaf, float) or (
        hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
    )


def build_task(config: FitConfig):
    """The fit task, its arrays in the config's precision (like the model's)."""
    spec, dtype = config.task, dtype_of(config.precision)
    task = TASKS[spec.kind].build(spec.spec(), config.model.d, config.seed)
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if _is_inexact(leaf) and hasattr(leaf, "astype") else leaf,
        task,
    )


def build_flow(config: FitConfig):
    from .._fit import FlowOptions
    from .._stored_adjoint import StoredAdjoint

    solver, dt0 = solver_of(config.solver)
    flow, max_steps = config.flow, config.solver.max_steps
    if flow.adjoint == "recursive_checkpoint":
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=flow.checkpoints)
    elif flow.adjoint == "stored":
        adjoint, max_steps = StoredAdjoint(), flow.stored_max_steps
    else:
        adjoint = diffrax.BacksolveAdjoint()
    return FlowOptions(
        horizon=flow.horizon,
        solver=solver,
        dt0=dt0,
        rtol=config.solver.rtol,
        atol=config.solver.atol,
        max_steps=max_steps,
        adjoint=adjoint,
    )


def build_optimizer(config: FitConfig) -> optax.GradientTransformation:
    spec = config.train
    steps, rate = spec.steps, spec.learning_rate
    schedules = {
        "constant": lambda: optax.constant_schedule(rate),
        "cosine": lambda: optax.cosine_decay_schedule(rate, max(steps, 1)),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, rate, spec.warmup_steps, max(steps, spec.warmup_steps + 1)
        ),
    }
    optimizer = {"adam": optax.adam, "sgd": optax.sgd}[spec.optimizer](schedules[spec.schedule]())
    if spec.clip_norm is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(spec.clip_norm), optimizer)
