"""`solve_batch`: one lean adaptive Runge–Kutta loop for a batch of small sphere-field systems.

`tf.solve` (diffrax) is the general path. This module runs the same method (Tsit5 or Bosh3
with FSAL, diffrax's PI controller and RMS error norm, the field evaluated at x/|x| and the
state renormalised after every step, as `solve` does for explicit solvers) as one
`lax.while_loop` over a fixed number of lanes, each system with its own time and step size,
and the observable computed at the save times inside the loop. The loop is a work queue: a
lane whose system reaches t1 takes the next system of the batch, so lanes do not idle while
the slowest system finishes (issue 22 item 2). On the CPU it compiles in ~40% less
time than the vmapped diffrax solve and runs about as fast (the field evaluations are ~80% of
either: BENCHMARKS.md, issue 12 item 1); it is meant for accelerators, where fewer, larger
kernels per step matter, and that is not yet measured.
"""

import functools
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from ._field._base import AbstractSphereField
from ._solve import _RadialExtension
from ._sphere import normalize
from ._validation import (
    as_float_array,
    check_condition,
    check_finite,
    check_on_sphere,
    check_positive,
)


def _tableau(solver) -> tuple:
    """(a, c, b_error) of a diffrax Runge–Kutta solver with first-same-as-last stages, as
    Python floats: `a[i]` gives stage i + 1 from stages 0..i at time t + c[i]·h; the last
    row equals the solution weights (the last stage is evaluated at the new state)."""
    tableau = solver.tableau
    assert tableau.fsal and np.allclose(tableau.a_lower[-1], tableau.b_sol[:-1])
    a = tuple(tuple(float(v) for v in row) for row in tableau.a_lower)
    return a, tuple(float(v) for v in tableau.c), tuple(float(v) for v in tableau.b_error)


# name -> (a, c, b_error, error order as diffrax's PIDController uses it).
_METHODS = {
    "tsit5": (*_tableau(diffrax.Tsit5), 5),
    "bosh3": (*_tableau(diffrax.Bosh3), 3),
}
_SAVE_MODES = ("interpolate", "clip")
# diffrax.PIDController defaults as `tf.solve` sets them (pcoeff=0.3, icoeff=0.4).
_PCOEFF, _ICOEFF, _SAFETY, _FACTORMIN, _FACTORMAX = 0.3, 0.4, 0.9, 0.2, 10.0


class BatchTrajectory(eqx.Module):
    """The output of `solve_batch` for B systems and T save times.

    - `ts`: the save times, shape (T,).
    - `xs`: states (B, T, n, d) on the sphere; None when `observe` was given.
    - `observed`: `observe(x)` of each system at each save time, leading axes (B, T), or None.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: per system, shape (B,).
    - `succeeded`: per system, True when it reached `ts[-1]` within `max_steps` with finite
      saved states (or observations): an overflow (NaN, inf) is a failure.
    - `num_lane_steps`: the steps the loop computed over all its lanes (loop trips × lanes),
      masked ones included; `num_steps.sum() / num_lane_steps` is the share of useful work.
    """

    ts: Float[Array, " times"]
    xs: Float[Array, "batch times n d"] | None
    observed: PyTree | None
    num_steps: Int[Array, " batch"]
    num_accepted_steps: Int[Array, " batch"]
    num_rejected_steps: Int[Array, " batch"]
    succeeded: Bool[Array, " batch"]
    num_lane_steps: Int[Array, ""]


def solve_batch(
    field: eqx.Module,
    x0s: ArrayLike,
    ts: ArrayLike,
    *,
    batched_field: bool = False,
    batched_observe: bool = False,
    rtol: float | ArrayLike = 1e-6,
    atol: float | ArrayLike = 1e-6,
    dt0: float | ArrayLike = 0.01,
    method: str = "tsit5",
    save: str = "interpolate",
    observe: Callable[[Array], PyTree] | None = None,
    max_steps: int = 16_384,
    throw: bool = True,
    args: PyTree = None,
    lanes: int | None = None,
) -> BatchTrajectory:
    """Integrate B systems of a sphere field, each from `x0s[b]` at `ts[0]`, saving at `ts`.

    The same method as `tf.solve(field, x0s[b], ts, solver=diffrax.Tsit5(), rtol=, atol=)`
    vmapped over b (Tsit5 or Bosh3 with first-same-as-last stages, diffrax's PI controller
    with pcoeff = 0.3, icoeff = 0.4 and its RMS norm of error / (atol + rtol·max(|y0|, |y1|)),
    the same first step, radial projection onto the sphere after every step), written as
    one `lax.while_loop` over `lanes` systems at a time: each system has its own time and
    step and accepts or rejects its own step. The loop is a work queue over the batch: when
    a lane's system reaches `ts[-1]` (or `max_steps`), the lane takes the next system that has
    not started, so lanes idle (masked) only once the queue is empty, instead of every lane
    running the slowest system's steps. The observable is evaluated at the save times inside
    the loop, so no trajectory is stored. Each system's arithmetic does not depend on which
    systems share the loop with it: in float64 the saves and step counts are bitwise those
    of the lock-stepped batch (`lanes=B`). Another lane count is another compiled program,
    and in float32 its rounding can differ (at 32 lanes, 8% of Fig. 3(a)'s systems took
    one step more or fewer than at 2048; none at 64–256).

    **Arguments:**
    - `field`: a sphere field (`SelfAttention`, `UnnormalizedSelfAttention`, ...) without layer
      boundaries (`jump_times()` None). One field for every system, or, with
      `batched_field=True`, a field whose array leaves carry the batch on axis 0, e.g.
      `eqx.filter_vmap(tf.SelfAttention)(betas)` for one β per system.
    - `x0s`: starts of shape (B, n, d), rows on the unit sphere; the solve runs in their dtype.
    - `ts`: strictly increasing save times, shared by all systems.
    - `rtol`, `atol`: tolerances of the step-size controller: scalars, or one per system
      (shape (B,), e.g. a tolerance sweep).
    - `dt0`: the first step of every system. The default 0.01 is what `tf.solve` takes:
      diffrax 0.7 wraps the ODE term, and its initial-step heuristic then returns 0.01.
    - `method`: "tsit5" (5th order, 6 new evaluations per step) or "bosh3" (3rd, 3).
    - `save`: "interpolate" (diffrax's dense output: Tsit5's 4th-order interpolant, Bosh3's
      cubic Hermite; the steps are diffrax's step for step) or "clip" (every step is
      shortened to end on the next save time, which is then hit exactly; more steps).
    - `observe`: save `observe(x)` of each system's (n, d) state instead of the state.
    - `batched_observe`: `observe` is a module whose array leaves carry the batch on axis 0
      (one observer per system, e.g. an observable that reads the system's β), as
      `batched_field` for the field.
    - `max_steps`: bound on each system's steps (accepted and rejected).
    - `throw`: raise (an equinox runtime error) if a system did not reach `ts[-1]` or
      overflowed (a saved state or observation is NaN or inf); else read `succeeded`.
    - `args`: passed to the field.
    - `lanes`: how many systems are integrated side by side (at most B). B lanes is the
      plain lock-stepped batch (fewest loop trips, every lane runs the slowest system's
      steps). The default is min(B, 32) on the CPU (Fig. 3(a)'s 2048 systems: 99% of the
      evaluations useful against 74% lock-stepped; 64 lanes and more cost 1.4–1.6× the CPU
      time of 16–48 at n = 32, d = 2, and smaller lanes were never slower in the shapes
      measured; BENCHMARKS.md, "The CPU lane default") and
      min(B, max(64, ⌈B/8⌉)) on accelerators, which want wide steps: about eight systems
      per lane, so the lanes idle while the last systems finish are a small share.

    Not supported (a ValueError says what to use instead): Euclidean and angle fields, fields
    with layer boundaries, noise, other solvers — use `tf.solve`. Reverse-mode
    differentiation through the loop is not supported either (a `lax.while_loop`); use
    `tf.solve` with its adjoints for gradients.

    **Returns:** a `BatchTrajectory`.
    """
    if not isinstance(field, AbstractSphereField):
        raise ValueError(
            f"`solve_batch` integrates sphere fields (SelfAttention, UnnormalizedSelfAttention, "
            f"...), got {type(field).__name__}; integrate other fields with `tf.solve` "
            "(jax.vmap over the batch)."
        )
    if method not in _METHODS:
        raise ValueError(
            f"`method` must be one of {sorted(_METHODS)}, got {method!r}; for other solvers "
            "use `tf.solve(..., solver=...)`."
        )
    if save not in _SAVE_MODES:
        raise ValueError(f"`save` must be one of {_SAVE_MODES}, got {save!r}.")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")
    if lanes is not None and (not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1):
        raise ValueError(
            f"`lanes` must be a positive integer (systems integrated side by side) or None, "
            f"got {lanes!r}."
        )
    if observe is not None and not callable(observe):
        raise ValueError(f"`observe` must be a function of one state (n, d), got {observe!r}.")
    if batched_observe and observe is None:
        raise ValueError("`batched_observe=True` needs `observe` (a batch of observers).")
    if field.jump_times() is not None:
        raise ValueError(
            f"`field` ({type(field).__name__}) has layer boundaries (jump_times), which "
            "`solve_batch` does not step to; use `tf.solve`, which clips its steps there."
        )
    x0s = as_float_array(x0s, "x0s")
    if x0s.ndim != 3:
        raise ValueError(
            f"`x0s` must be a batch of starts of shape (B, n, d), got shape {x0s.shape}; "
            "for one system pass x0[None]."
        )
    if x0s.shape[0] < 1:
        raise ValueError(f"`x0s` holds no system (shape {x0s.shape}); pass at least one start.")
    dtype = x0s.dtype
    lanes = _default_lanes(x0s.shape[0]) if lanes is None else min(lanes, x0s.shape[0])
    one_field = field
    if batched_field:
        _check_batched(
            field, "field", x0s.shape[0], "build it with `eqx.filter_vmap(tf.SelfAttention)(betas)`"
        )
        one_field = jax.tree_util.tree_map(
            lambda leaf: leaf[0] if eqx.is_array(leaf) else leaf, field
        )
    if batched_observe:
        _check_batched(
            observe, "observe", x0s.shape[0], "build the observers with `eqx.filter_vmap`"
        )
    one_field.check_state(x0s[0])
    for leaf in jax.tree_util.tree_leaves(eqx.filter(field, eqx.is_inexact_array)):
        weak = getattr(leaf, "weak_type", False)
        if not weak and np.promote_types(leaf.dtype, dtype) != dtype:
            raise ValueError(
                f"`field` has a weight of dtype {leaf.dtype.name} but `x0s` has dtype "
                f"{dtype.name}; the solve runs in the dtype of `x0s`: cast one side."
            )
    ts = as_float_array(ts, "ts").astype(dtype)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"`ts` must be a 1-d array of save times, got shape {ts.shape}.")
    x0s = check_on_sphere(check_finite(x0s, "x0s"), "x0s")
    ts = check_finite(ts, "ts", "Save times must be finite, e.g. jnp.linspace(0, 10, 101).")
    ts = check_condition(
        ts,
        jnp.any(jnp.diff(ts) <= 0),
        "`ts` must be strictly increasing (it holds the save times from t0 to t1).",
    )
    # Checked now when concrete, at run time when traced (a vmapped tolerance sweep).
    rtol, atol, dt0 = (
        jnp.asarray(check_positive(as_float_array(value, name), name), dtype)
        for name, value in (("rtol", rtol), ("atol", atol), ("dt0", dt0))
    )
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value.shape not in ((), (x0s.shape[0],)):
            raise ValueError(
                f"`{name}` must be a scalar or one value per system (shape ({x0s.shape[0]},)), "
                f"got shape {value.shape}."
            )
    if dt0.shape != ():
        raise ValueError(f"`dt0` must be a scalar, got shape {dt0.shape}.")
    result = _solve_batch(
        field, x0s, ts, batched_field, rtol, atol, dt0, method, save, observe, max_steps, args,
        lanes, batched_observe,
    )  # fmt: skip
    if throw:
        result = eqx.error_if(
            result,
            ~jnp.all(result.succeeded),
            "`solve_batch`: some systems did not reach ts[-1] within `max_steps` or "
            "overflowed (a NaN or inf state); raise `max_steps`, loosen rtol/atol, use float64 "
            "(or time_rescaled=True for UnnormalizedSelfAttention at large beta), or pass "
            "throw=False and read `succeeded`.",
        )
    return result


def _check_batched(tree, name: str, batch: int, fix: str) -> None:
    """`batched_<name>=True`: every array leaf of `tree` carries the batch on axis 0."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))
    bad = [leaf.shape for leaf in leaves if leaf.ndim < 1 or leaf.shape[0] != batch]
    if bad:
        raise ValueError(
            f"`batched_{name}=True` needs every array leaf of `{name}` to have the batch "
            f"size {batch} on axis 0, got leaves of shapes {bad}; {fix}."
        )


def _default_lanes(batch: int) -> int:
    """min(B, 32) on the CPU; min(B, max(64, ⌈B/8⌉)) (about eight systems per lane) on
    accelerators."""
    if jax.default_backend() == "cpu":
        return min(batch, 32)
    return min(batch, max(64, -(-batch // 8)))


def _rms(x):
    """diffrax's `rms_norm` of each system's (n, d) array: shape (B,)."""
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=(-2, -1)))


def _col(v):
    return v[:, None, None]


def _tsit5_weights(theta):
    """Tsit5's dense-output weights b_i(θ), i = 1..7 (diffrax `_Tsit5Interpolation`)."""
    t = theta
    return (
        -1.0530884977290216
        * t
        * (t - 1.3299890189751412)
        * (t**2 - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t**2 * (t**2 - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t**2 * (t**2 - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t**2,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t**2,
        -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t**2,
        2.5 * (t - 1) * (t - 0.6) * t**2,
    )


@eqx.filter_jit
def _solve_batch(
    field, x0s, ts, batched_field, rtol, atol, dt0, method, save, observe, max_steps, args,
    lanes, batched_observe=False,
) -> BatchTrajectory:  # fmt: skip
    a_rows, c, b_error, error_order = _METHODS[method]
    dtype = x0s.dtype
    batch = x0s.shape[0]
    num_ts = ts.shape[0]
    t0, t_end = ts[0], ts[-1]
    field_axis = 0 if batched_field else None

    def f(t, y, fields):
        # The radial extension, as `solve` uses for explicit solvers: no stiff normal mode
        # off the sphere for the stages to see.
        return jax.vmap(
            lambda fld, s, x: _RadialExtension(fld)(s, x, args), in_axes=(field_axis, 0, 0)
        )(fields, t, y)

    def observation(y, system):
        y = normalize(y)
        if observe is None:
            return y
        # Observables never see an overflowed state (a placeholder point instead), and a NaN
        # beside the observation marks it: `succeeded` reads it (counts of NaN are finite).
        finite = jnp.all(jnp.isfinite(y), axis=(-2, -1))
        safe = jnp.where(finite[:, None, None], y, jnp.zeros_like(y).at[..., 0].set(1))
        if batched_observe:
            observed = jax.vmap(lambda o, x: o(x))(_rows(observe, system, batch), safe)
        else:
            observed = jax.vmap(observe)(safe)
        return observed, jnp.where(finite, 0, jnp.nan).astype(y.dtype)

    def as_float(v):
        # Integer observables (cluster counts) are kept in the state's float dtype.
        return v if jnp.issubdtype(v.dtype, jnp.inexact) else v.astype(dtype)

    first = jax.tree_util.tree_map(as_float, observation(x0s, jnp.arange(batch)))
    buffers = jax.tree_util.tree_map(
        lambda v: jnp.zeros((batch, num_ts, *v.shape[1:]), v.dtype).at[:, 0].set(v), first
    )

    def write(buffers, values, index, mask, system):
        # Each lane writes its system's row; masked lanes write out of bounds (dropped).
        row = jnp.where(mask, system, batch)

        def put(buffer, value):
            return buffer.at[row, index].set(as_float(value), mode="drop")

        return jax.tree_util.tree_map(put, buffers, values)

    tb0 = jnp.full((batch,), t0, dtype)
    # Every system's first stage, once for the whole batch (a lane refilled with system b
    # starts from f0s[b]).
    f0s = f(tb0, x0s, field)
    # diffrax rounds a step that ends within 100 ULPs of t1 to t1.
    t_floor = t_end
    for _ in range(100):
        t_floor = jnp.nextafter(t_floor, jnp.asarray(-jnp.inf, dtype))
    tnext0 = jnp.minimum(t0 + jnp.asarray(dt0, dtype), t_end)

    def start(system):
        """Lane state of `system` (shape (L,)) at t0; lanes with system = B are empty."""
        safe = jnp.minimum(system, batch - 1)
        return dict(
            system=system,
            tprev=jnp.full(system.shape, t0, dtype),
            tnext=jnp.full(system.shape, tnext0, dtype),
            y=x0s[safe],
            fsal=f0s[safe],
            inv_prev=jnp.ones(system.shape, dtype),
            index=jnp.ones(system.shape, jnp.int32),
            steps=jnp.zeros(system.shape, jnp.int32),
            accepted=jnp.zeros(system.shape, jnp.int32),
            done=(system >= batch) | (num_ts == 1),
        )

    lane_state = start(jnp.arange(lanes, dtype=jnp.int32))
    # Per-system results, written when a system leaves its lane.
    results0 = dict(
        steps=jnp.zeros((batch,), jnp.int32),
        accepted=jnp.zeros((batch,), jnp.int32),
        index=jnp.ones((batch,), jnp.int32),
        done=jnp.full((batch,), num_ts == 1),
    )
    state0 = dict(
        lanes=lane_state,
        results=results0,
        queue=jnp.asarray(lanes, jnp.int32),  # the next system to load
        trips=jnp.zeros((), jnp.int32),
        buffers=buffers,
    )
    coeff1 = (_PCOEFF + _ICOEFF) / error_order
    coeff2 = -_PCOEFF / error_order

    def live(lane):
        return ~lane["done"] & (lane["steps"] < max_steps)

    def cond(state):
        return jnp.any(live(state["lanes"]))

    def step(lane, buffers):
        """One Runge–Kutta step (accepted or rejected) of every live lane."""
        active = live(lane)
        system = lane["system"]
        lane_field = _rows(field, system, batch) if batched_field else field
        # Per-system tolerances (a tolerance sweep) follow the lane's system.
        lane_rtol, lane_atol = (
            _col(_rows(v, system, batch)) if v.ndim else v for v in (rtol, atol)
        )
        tprev, y, index = lane["tprev"], lane["y"], lane["index"]
        next_save = ts[jnp.minimum(index, num_ts - 1)]
        if save == "clip":
            clipped = lane["tnext"] >= next_save
            tnext = jnp.where(clipped, next_save, lane["tnext"])
        else:
            tnext = lane["tnext"]
        h = jnp.where(active, tnext - tprev, 0).astype(dtype)
        hc = _col(h)
        # Runge–Kutta stages; the last one is at the new state (first same as last).
        stages = [lane["fsal"]]
        for row, ci in zip(a_rows, c, strict=True):
            increment = sum(aij * k for aij, k in zip(row, stages, strict=True) if aij != 0.0)
            stage_state = y + hc * increment
            stages.append(f(tprev + ci * h, stage_state, lane_field))
        y1_raw = stage_state  # the last row holds the solution weights
        error = hc * sum(e * k for e, k in zip(b_error, stages, strict=True))
        y1 = normalize(y1_raw)
        # diffrax's PIDController.adapt_step_size (dcoeff = 0, no dtmin/dtmax).
        nan = jnp.isnan(y1).any(axis=(-2, -1))
        y_scale = jnp.maximum(jnp.abs(y), jnp.abs(jnp.where(_col(nan), y, y1)))
        scaled_error = _rms(error / (lane_atol + y_scale * lane_rtol))
        keep = (scaled_error < 1) & active
        inv = 1 / scaled_error
        factor = jnp.clip(
            _SAFETY * inv**coeff1 * lane["inv_prev"] ** coeff2,
            jnp.where(keep, 1.0, _FACTORMIN),
            jnp.where(keep, _FACTORMAX, _SAFETY),
        )
        dt = h * factor.astype(dtype)
        if save == "clip":
            # A step shortened to reach a save time does not shrink the next one.
            dt = jnp.where(clipped & keep, jnp.maximum(dt, lane["tnext"] - tprev), dt)
        inv = jnp.where((inv == 0) | jnp.isinf(inv), 1, inv)
        new_tprev = jnp.minimum(jnp.where(keep, tnext, tprev), t_end)
        new_tnext = new_tprev + dt
        new_tnext = jnp.where(
            new_tnext > t_floor,
            jnp.where(keep, t_end, new_tprev + 0.5 * (t_end - new_tprev)),
            new_tnext,
        )
        if save == "clip":
            hit = keep & clipped
            buffers = write(
                buffers, observation(jnp.where(_col(hit), y1, y), system), index, hit, system
            )
            index = index + hit.astype(jnp.int32)
        else:
            buffers, index = _save_interpolated(
                method, ts, tprev, tnext, y, y1_raw, stages, hc, keep, index, buffers,
                functools.partial(observation, system=system),
                functools.partial(write, system=system),
            )  # fmt: skip
        keepc = _col(keep)
        lane = dict(
            system=system,
            tprev=jnp.where(active, new_tprev, tprev),
            tnext=jnp.where(active, new_tnext, lane["tnext"]),
            y=jnp.where(keepc, y1, y),
            fsal=jnp.where(keepc, stages[-1], lane["fsal"]),
            inv_prev=jnp.where(keep, inv, lane["inv_prev"]),
            index=index,
            steps=lane["steps"] + active.astype(jnp.int32),
            accepted=lane["accepted"] + keep.astype(jnp.int32),
            done=lane["done"] | (keep & (new_tprev >= t_end)),
        )
        return lane, buffers

    def body(state):
        lane, buffers = step(state["lanes"], state["buffers"])
        # Work queue: a lane whose system has finished (reached t1 or max_steps) hands its
        # counts to the results and takes the next system of the batch, if any is left.
        system = lane["system"]
        leaving = (system < batch) & ~live(lane)
        row = jnp.where(leaving, system, batch)
        results = {
            key: state["results"][key].at[row].set(lane[key], mode="drop")
            for key in state["results"]
        }
        rank = jnp.cumsum(leaving.astype(jnp.int32)) - 1
        incoming = jnp.where(leaving, state["queue"] + rank, system)
        incoming = jnp.where(leaving & (incoming >= batch), batch, incoming)
        fresh = start(incoming)
        lane = jax.tree_util.tree_map(
            lambda new, old: jnp.where(
                leaving.reshape(leaving.shape + (1,) * (old.ndim - 1)), new, old
            ),
            fresh,
            lane,
        )
        return dict(
            lanes=lane,
            results=results,
            queue=state["queue"] + jnp.sum(leaving, dtype=jnp.int32),
            trips=state["trips"] + 1,
            buffers=buffers,
        )

    final = lax.while_loop(cond, body, state0)
    buffers, results = final["buffers"], final["results"]
    if observe is not None:
        one_observe = (
            _rows(observe, jnp.zeros((), jnp.int32), batch) if batched_observe else observe
        )
        observed_dtypes = jax.eval_shape(one_observe, x0s[0])
        observed = jax.tree_util.tree_map(
            lambda b, s: b.astype(s.dtype), buffers[0], observed_dtypes
        )
        xs = None
    else:
        observed, xs = None, buffers
    return BatchTrajectory(
        ts=ts,
        xs=xs,
        observed=observed,
        num_steps=results["steps"],
        num_accepted_steps=results["accepted"],
        num_rejected_steps=results["steps"] - results["accepted"],
        # A system whose saved states or observations (raw buffers: counts saved as floats)
        # hold NaN or inf overflowed: a failure, never a result.
        succeeded=results["done"] & (results["index"] == num_ts) & _finite_per_system(buffers),
        num_lane_steps=final["trips"] * lanes,
    )


def _rows(tree, system, batch):
    """The rows `system` of the array leaves of a batched pytree (empty lanes, system = B,
    read the last row)."""
    index = jnp.minimum(system, batch - 1)
    return jax.tree_util.tree_map(lambda leaf: leaf[index] if eqx.is_array(leaf) else leaf, tree)


def _finite_per_system(buffers) -> Array:
    """Per system (axis 0), whether every inexact leaf of `buffers` is finite."""
    flags = [
        jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        for leaf in jax.tree_util.tree_leaves(buffers)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return functools.reduce(jnp.logical_and, flags)


def _save_interpolated(
    method, ts, tprev, tnext, y, y1_raw, stages, hc, keep, index, buffers, observation, write
):
    """Save every ts[index] <= tnext of the accepted steps from the step's dense output
    (as diffrax's SaveAt(ts) does), one save time per system per pass."""
    num_ts = ts.shape[0]
    dtype = y.dtype

    def pending(index):
        return keep & (index < num_ts) & (ts[jnp.minimum(index, num_ts - 1)] <= tnext)

    def interpolate(t):
        span = tnext - tprev
        theta = jnp.where(span == 0, 0, (t - tprev) / jnp.where(span == 0, 1, span))
        # Systems with no save in this step compute a masked value too: clamping keeps it
        # finite (an extrapolation far out could overflow and trip checks in `observe`).
        theta = _col(jnp.clip(theta, 0, 1).astype(dtype))
        if method == "tsit5":
            weights = _tsit5_weights(theta)
            return y + hc * sum(w * k for w, k in zip(weights, stages, strict=True))
        # Bosh3: diffrax's cubic Hermite through (y0, h f0) and (y1, h f1).
        k0, k1 = hc * stages[0], hc * stages[-1]
        return (
            y
            + theta * k0
            + theta**2 * (3 * (y1_raw - y) - 2 * k0 - k1)
            + theta**3 * (2 * (y - y1_raw) + k0 + k1)
        )

    def body(carry):
        buffers, index = carry
        mask = pending(index)
        t = ts[jnp.minimum(index, num_ts - 1)]
        # Lanes without a save observe their current state (finite, on the sphere) instead,
        # so that checks inside `observe` never see a discarded value.
        saved = jnp.where(_col(mask), interpolate(t), y)
        buffers = write(buffers, observation(saved), index, mask)
        return buffers, index + mask.astype(jnp.int32)

    return lax.while_loop(lambda carry: jnp.any(pending(carry[1])), body, (buffers, index))
