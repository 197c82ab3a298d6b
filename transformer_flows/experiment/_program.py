"""The compiled program of one shape: a jitted solve of the chunk's combos (weights ensemble,
β, start, tolerance, swept parameters). Names become objects in `_build`.

Noiseless adaptive Tsit5/Bosh3 sweeps of sphere fields run through `solve_batch`'s work queue
(issue 22 item 2): a lane whose system reaches t1 takes the chunk's next system, so no lane
waits for the chunk's slowest system. Everything else (SDEs, fixed-step and implicit or other
adaptive solvers, angle and Euclidean states, placements, feed-forward blocks, layers, solves
in the span of the starts) runs a vmapped `solve` (diffrax's loop); see `work_queue_applies`."""

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._field._base import AbstractSphereField
from .._field._feed_forward import TransformerBlock
from .._initial import orthonormal_tokens, sample_hemisphere, sample_sphere
from .._solve import solve
from .._solve_batch import _METHODS as QUEUE_METHODS, solve_batch
from .._span import solve_in_span
from .._sphere import angles_to_points, normalize, points_to_angles
from ._build import (
    build_field,
    build_noise,
    dtype_of,
    feed_forward,
    field_entry,
    solver_of,
    weight_draws,
)
from ._plan import Plan, Shape
from ._registry import OBSERVABLES, PLACEMENTS, SOLVERS, WEIGHTS, ObservableContext
from ._schema import SimulationConfig, weights_parameters

# Starts and weights are drawn in float32 whatever the precision, so that a float32 and a float64
# run of one config integrate the same systems and differ by precision only.
DRAW_DTYPE = jnp.float32
# The Brownian path of start s is drawn from fold_in(fold_in(key(seed), s), NOISE_STREAM): a
# stream of its own beside the split that draws the start and the weights, which noisy sweeps
# leave as they are (the same starts and weights as the noiseless sweep).
NOISE_STREAM = 0x6E6F6973
# The feed-forward weights of start s (model.feed_forward) come from
# fold_in(fold_in(key(seed), s), FEED_FORWARD_STREAM): the starts and attention weights stay
# those of the sweep without the term.
FEED_FORWARD_STREAM = 0x66666E


class Observer(eqx.Module):
    """The `observe=` callback of one solve: the configured observables of a state (angles are
    mapped to points on the circle first). β is a leaf (it is vmapped over), the rest static."""

    beta: jax.Array
    names: tuple[str, ...] = eqx.field(static=True)
    delta: float = eqx.field(static=True)
    harmonic: int = eqx.field(static=True)
    angles: bool = eqx.field(static=True, default=False)
    # States in R^d (Pre-LN, Peri-LN, ...): observables see the directions x_i/|x_i|, except
    # `radial` ones (mean_radius), which see the states as they are.
    euclidean: bool = eqx.field(static=True, default=False)
    # The attention field, for observables that read its heads (None: no such observable).
    field: eqx.Module | None = None

    def __call__(self, x):
        points = angles_to_points(x) if self.angles else x
        directions = normalize(points) if self.euclidean else points
        context = ObservableContext(self.beta, self.delta, self.harmonic, self.field)
        # `solve` saves integer observables (cluster counts) through float buffers itself.
        return {
            name: OBSERVABLES[name].function(
                points if OBSERVABLES[name].radial else directions, context
            )
            for name in self.names
        }


_PROGRAM_CACHE: dict = {}
# A queued chunk whose saved states (B × T × n × d) fit in this many bytes observes them after
# the loop (Fig. 3(a) at d = 2: 2048 × 151 × 32 × 2 float32 = 79 MB); larger ones observe
# inside the loop and store only the observables.
STATES_BUDGET_BYTES = 256 * 2**20


def _observe_saved(observers, xs):
    """The observables of saved states xs (B, T, n, d), observer b for system b, and per
    system whether every state and observation is finite. An overflowed state is observed as
    a placeholder point (observables never see NaN or inf), as `solve` does."""
    finite_state = jnp.all(jnp.isfinite(xs), axis=(-2, -1))
    # Saves a failed solve never reached hold zeros: observed as the placeholder too (the
    # system is masked as failed). Saved states have unit rows.
    written = jnp.all(jnp.sum(jnp.square(xs), axis=-1) > 0.5, axis=-1)
    # One (n, d) placeholder, broadcast (a full-size constant would be folded at compile time).
    placeholder = jnp.zeros(xs.shape[-2:], xs.dtype).at[:, 0].set(1)
    safe = jnp.where((finite_state & written)[..., None, None], xs, placeholder)
    observed = jax.vmap(lambda observer, states: jax.vmap(observer)(states))(observers, safe)
    finite = jnp.all(finite_state, axis=1)
    for leaf in jax.tree_util.tree_leaves(observed):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
    return observed, finite


def program(config: SimulationConfig, shape: Shape, plan: Plan):
    """The jitted, vmapped solve of one chunk (cached, so resuming in the same process does
    not compile again)."""
    numerics = config.numerics()
    # The shape carries its H and L: the sweeps of one (H, L) from different lists share it.
    numerics["model"] = {k: v for k, v in numerics["model"].items() if k not in ("heads", "layers")}
    cache_key = (
        json.dumps(numerics, sort_keys=True),
        shape,
        plan.chunk_length(shape),
        jax.config.jax_enable_x64,
    )
    if cache_key not in _PROGRAM_CACHE:
        if len(_PROGRAM_CACHE) >= 4:
            _PROGRAM_CACHE.pop(next(iter(_PROGRAM_CACHE)))
        _PROGRAM_CACHE[cache_key] = _build_program(config, shape, plan)
    return _PROGRAM_CACHE[cache_key]


def chunk_inputs(config: SimulationConfig, plan: Plan, shape: Shape, chunk: int):
    """The program's arguments for one chunk: per combo the ensemble index, β, start,
    tolerance and the swept parameter values."""
    dtype = dtype_of(config.precision)
    w, b, s, r, *p = plan.chunk_indices(shape, chunk)
    params = [
        jnp.asarray(values[index], dtype=dtype)
        for values, index in zip(plan.params.values(), p, strict=True)
    ]
    return (
        jnp.asarray(w),
        jnp.asarray(plan.beta[b], dtype=dtype),
        jnp.asarray(plan.starts[s]),
        jnp.asarray(plan.tolerances[r], dtype=dtype),
        *params,
    )


def work_queue_applies(config: SimulationConfig, shape: Shape) -> bool:
    """Whether the program of `shape` runs `solve_batch`'s work queue (else a vmapped
    `solve`): a noiseless sweep of a sphere field (points, no placement wrapper, no
    feed-forward block, no layer boundaries) with an adaptive solver the queue implements
    (Tsit5, Bosh3), which is not solved in the span of its starts (identity weights, d > n)."""
    model = config.model
    entry = field_entry(model.field)
    placement = PLACEMENTS[shape.placement]
    return (
        model.noise is None
        and config.solver.name in QUEUE_METHODS
        and model.feed_forward is None
        and not model.layers
        and placement.wrap is None
        and not placement.euclidean
        and issubclass(entry.cls, AbstractSphereField)
        and not _in_span(config, shape)
    )


def _in_span(config: SimulationConfig, shape: Shape) -> bool:
    """Identity weights keep span{x_i(0)}: for d > n the sweep solves in that span."""
    model = config.model
    entry = field_entry(model.field)
    return (
        model.noise is None
        and model.feed_forward is None  # w σ(a x + b) does not keep span{x_i(0)}
        and not shape.random
        and entry.state != "angles"
        and entry.rotation_invariant
        and shape.d > shape.n
        and PLACEMENTS[shape.placement].wrap is None
    )


def _build_program(
    config: SimulationConfig,
    shape: Shape,
    plan: Plan,
    work_queue: bool = True,
    lane_steps: bool = False,
    lanes: int | None = None,
    observe_after: bool = True,
):
    """The program of one shape; `work_queue=False` forces the vmapped `solve` (the sweep as
    it ran before the work queue: tests and benchmarks compare the two). `lane_steps=True`
    adds a fourth output, the steps computed over all lanes (masked ones included), so that
    Σ num_steps / lane steps is the share of useful work (benchmarks); `lanes` overrides the
    queue's lane count (benchmarks). `observe_after`: when the chunk's saved states fit in
    `STATES_BUDGET_BYTES`, the queue saves states and the observables are computed once over
    all (system, save time) pairs after the loop, instead of inside its save passes, where
    every pass evaluates them on every lane (cluster labels run a while loop of their own)."""
    dtype = dtype_of(config.precision)
    model, observables, solver_config = config.model, config.observables, config.solver
    entry = field_entry(model.field)
    angles = entry.state == "angles"
    ts = jnp.asarray(plan.times, dtype=dtype)
    base_key = jax.random.key(config.sweep.seed)
    sample = {
        "sphere": sample_sphere,
        "hemisphere": sample_hemisphere,
        "orthonormal": lambda key, n, d, dtype: orthonormal_tokens(n, d, key=key, dtype=dtype),
    }[shape.initial]
    placement = PLACEMENTS[shape.placement]
    placement_params = {
        k: v for k, v in model.placement_params.items() if k in placement.parameters
    }
    solver, dt0 = solver_of(solver_config)
    if dt0 is None and not SOLVERS[solver_config.name].adaptive:
        dt0 = float(plan.times[-1]) / shape.layers  # one step per layer (validated config)
    fixed_params = dict(model.params)
    param_names = tuple(plan.params)
    noise_names = () if model.noise is None else model.noise.parameters
    reads_field = any(OBSERVABLES[name].field for name in observables.names)
    tolerance_axis = plan.has_tolerance_axis
    options = {}
    if shape.layers:
        options["layer_duration"] = float(plan.times[-1]) / shape.layers

    stack = tuple(size for size in (shape.layers, shape.heads) if size)
    fixed_weights = weights_parameters(config)
    weight_names = {name for w in shape.weights for name in WEIGHTS[w].parameters}

    def stacked(name, draw):
        """One ensemble's draw with a leading (layers, heads) stack of independent draws;
        a parameterised ensemble also takes its parameters (fixed, or swept: `values`)."""

        def weights_of(key, values):
            extra = {}
            if name in fixed_weights:
                extra = {
                    "heads": shape.heads or 1,
                    "layers": shape.layers or 1,
                    **fixed_weights[name],
                    **values,
                }
            one = functools.partial(draw, d=shape.d, dtype=DRAW_DTYPE, **extra)
            for _ in stack:
                one = jax.vmap(one)
            if stack:
                key = jax.random.split(key, int(np.prod(stack))).reshape(stack)
            Q, K, V = one(key)
            if V is None:  # every ensemble of a program returns arrays, for `lax.switch`
                V = jnp.broadcast_to(jnp.eye(shape.d, dtype=DRAW_DTYPE), (*stack, shape.d, shape.d))
            return Q.astype(dtype), K.astype(dtype), V.astype(dtype)

        return weights_of

    draws = (
        [
            stacked(w, draw)
            for w, draw in zip(shape.weights, weight_draws(shape.weights), strict=True)
        ]
        if shape.random
        else []
    )
    integrate = solve
    if _in_span(config, shape):
        # Identity weights keep span{x_i(0)}: for d > n solve in that n-dimensional span
        # (exact, and d = 1024 then costs what d = n costs). Inner-product observables need
        # no map back.
        integrate = functools.partial(
            solve_in_span,
            observe_in_span=all(OBSERVABLES[name].inner_products for name in observables.names),
        )

    def cast(leaf):
        return leaf.astype(dtype) if isinstance(leaf, jax.Array) else leaf

    def setup(ensemble, beta, start, tolerance, *param_values):
        """(field, x0, observer, noise arguments) of one combo."""
        # Start s uses the same initial tokens (and weight key) for every β, ensemble and
        # parameter: common random numbers make the phase diagram smooth in β.
        start_key = jax.random.fold_in(base_key, start)
        init_key, weight_key = jax.random.split(start_key)
        x0 = normalize(sample(init_key, shape.n, shape.d, dtype=DRAW_DTYPE).astype(dtype))
        if angles:
            x0 = points_to_angles(x0)
        swept = dict(zip(param_names, param_values, strict=True))
        weights = None
        if shape.random:
            values = {k: v for k, v in swept.items() if k in weight_names}
            Q, K, V = jax.lax.switch(ensemble, draws, weight_key, values)
            # <Qx_i, Kx_j> = <(KᵀQ)x_i, x_j>: one query matrix and identity keys give the same
            # logits with one n×d×d product per field evaluation fewer.
            weights = (jnp.swapaxes(K, -1, -2) @ Q, None, V)
        not_field = (*noise_names, *weight_names)
        params = {**fixed_params, **{k: v for k, v in swept.items() if k not in not_field}}
        field = build_field(entry, beta, params, weights, **options)
        attention = field
        if model.feed_forward is not None:
            ff = feed_forward(
                model.feed_forward,
                jax.random.fold_in(start_key, FEED_FORWARD_STREAM),
                shape.d,
                shape.layers,
                options.get("layer_duration"),
                DRAW_DTYPE,
            )
            field = TransformerBlock(attention, jax.tree_util.tree_map(cast, ff))
        noise = build_noise(model.noise, swept)
        noisy = {}
        if noise is not None:
            noisy = {"noise": noise, "key": jax.random.fold_in(start_key, NOISE_STREAM)}
        if placement.wrap is not None:
            field = placement.wrap(field, **placement_params)
        observer = Observer(
            beta,
            tuple(observables.names),
            observables.delta,
            observables.harmonic,
            angles,
            placement.euclidean or entry.euclidean,
            attention if reads_field else None,
        )
        return field, x0, observer, noisy

    def one(ensemble, beta, start, tolerance, *param_values):
        field, x0, observer, noisy = setup(ensemble, beta, start, tolerance, *param_values)
        trajectory = integrate(
            field,
            x0,
            ts,
            solver=solver,
            dt0=dt0,
            # A tolerance axis is vmapped: `solve` takes traced tolerances (rtol = atol).
            rtol=tolerance if tolerance_axis else solver_config.rtol,
            atol=tolerance if tolerance_axis else solver_config.atol,
            max_steps=solver_config.max_steps,
            observe=observer,
            throw=False,
            **noisy,
        )
        return trajectory.observed, trajectory.succeeded, trajectory.stats["num_steps"]

    if not (work_queue and work_queue_applies(config, shape)):
        vmapped = jax.vmap(one)
        if not lane_steps:
            return eqx.filter_jit(vmapped)

        def with_lane_steps(*inputs):
            # The vmapped loop runs every lane for the chunk's slowest system.
            observed, succeeded, num_steps = vmapped(*inputs)
            return observed, succeeded, num_steps, jnp.max(num_steps) * num_steps.shape[0]

        return eqx.filter_jit(with_lane_steps)
    method = config.solver.name

    def queued(ensemble, beta, start, tolerance, *param_values):
        # Every combo's field, start and observer, built as the vmapped path builds them;
        # then one work queue over the chunk. In float64 each system's steps and saves are
        # those of the vmapped `solve` (diffrax) to rounding (tests/test_sweep_queue.py).
        fields, x0s, observers, _ = jax.vmap(setup)(ensemble, beta, start, tolerance, *param_values)
        after = observe_after and x0s[0].size * ts.size * x0s.shape[0] * x0s.dtype.itemsize <= (
            STATES_BUDGET_BYTES
        )
        trajectory = solve_batch(
            fields,
            x0s,
            ts,
            batched_field=True,
            batched_observe=not after,
            # `solve` with dt0=None starts every system with diffrax's first step, 0.01.
            rtol=tolerance if tolerance_axis else solver_config.rtol,
            atol=tolerance if tolerance_axis else solver_config.atol,
            method=method,
            observe=None if after else observers,
            max_steps=solver_config.max_steps,
            throw=False,
            lanes=lanes,
        )
        observed, succeeded = trajectory.observed, trajectory.succeeded
        if after:
            observed, finite = _observe_saved(observers, trajectory.xs)
            succeeded = succeeded & finite
        outputs = (observed, succeeded, trajectory.num_steps)
        return (*outputs, trajectory.num_lane_steps) if lane_steps else outputs

    return eqx.filter_jit(queued)
