"""`solve`: the single entry point that integrates a field with diffrax."""

from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._events import CrossingBisection
from ._field._base import AbstractAngleField, AbstractEuclideanField, AbstractSphereField
from ._field._self_attention import BETA_FIX
from ._noise import AbstractNoise, NoiseTerm
from ._results import RESULTS, finite_result
from ._solver._fixed_step import (
    AbstractFixedStepSolver,
    GeodesicEuler,
    NormalizedEuler,
    ResidualLayers,
)
from ._solver._renormalized import Renormalized
from ._sphere import normalize
from ._validation import (
    as_float_array,
    check_condition,
    check_finite,
    check_on_sphere,
    check_positive,
)

_SPHERE_PRESERVING = (Renormalized, NormalizedEuler, GeodesicEuler)


class Trajectory(eqx.Module):
    """The output of `solve`.

    - `ts`: the save times, shape (T,).
    - `xs`: states at `ts`, (T, n, d) points or (T, n) angles; None when `observe` was given.
    - `observed`: `observe(x)` at each save time (leading axis T), or None.
    - `stats`: solver statistics (`num_steps`, `num_accepted_steps`, `num_rejected_steps`, ...).
    - `result`: a `RESULTS` code (diffrax's, and `overflow`: a saved state or observable
      is NaN or inf); `succeeded` tells whether it is `successful`. A non-finite solve never
      succeeds. A solve stopped by `stop_when` succeeds (it did what was asked).
    - `event_time`: with `stop_when`, the time the solve stopped: the root-found first time a
      condition held, or `ts[-1]` when none did (then `stopped` is False); None without.
    - `event_mask`: with `stop_when`, which condition stopped the solve: a boolean per
      condition, in the structure of `stop_when` (one boolean for one condition; at most one
      True); None without.

    With `stop_when`, the saves after `event_time` are not results: their states and
    observations are NaN (integer observables are then returned as floats, to hold the NaN),
    and `saved` marks the saves that are.
    """

    ts: Float[Array, " times"]
    xs: Array | None
    observed: PyTree | None
    stats: dict[str, Array | int]  # diffrax also reports `max_steps` as a Python int
    result: RESULTS
    event_time: Float[Array, ""] | None = None
    event_mask: PyTree | None = None

    @property
    def succeeded(self):
        return self.result == RESULTS.successful

    @property
    def stopped(self):
        """Whether a `stop_when` condition stopped the solve (False without `stop_when`)."""
        if self.event_mask is None:
            return jnp.zeros(jnp.shape(self.ts)[:-1], bool)
        leaves = jax.tree_util.tree_leaves(self.event_mask)
        return jnp.any(jnp.stack(leaves, axis=-1), axis=-1)

    @property
    def saved(self):
        """Which saves hold results: `ts <= event_time` (all of them without `stop_when`)."""
        if self.event_time is None:
            return jnp.ones(jnp.shape(self.ts), bool)
        return self.ts <= jnp.expand_dims(self.event_time, -1)


def solve(
    field: AbstractSphereField | AbstractEuclideanField | AbstractAngleField,
    x0: ArrayLike | Sequence,
    ts: Float[ArrayLike, " times"] | Sequence[float],
    *,
    solver: diffrax.AbstractSolver | None = None,
    dt0: float | Float[ArrayLike, ""] | None = None,
    rtol: float | Float[ArrayLike, ""] = 1e-6,
    atol: float | Float[ArrayLike, ""] = 1e-6,
    max_steps: int = 16_384,
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
    observe: Callable[[Array], PyTree] | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    args: PyTree = None,
    throw: bool = True,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
    noise: AbstractNoise | None = None,
    key: PRNGKeyArray | None = None,
    stop_when: Callable | Sequence[Callable] | diffrax.Event | None = None,
) -> Trajectory:
    """Integrate `field` from `x0` at `ts[0]` and save at every time in `ts`.

    **Arguments:**
    - `field`: a sphere field (`SelfAttention`, `UnnormalizedSelfAttention`) with `x0` of
      shape (n, d) on the unit sphere; a field in R^d (`PreLN`, `PeriLN`, no normalisation)
      with `x0` of shape (n, d), anywhere; or an angle field (`Kuramoto`) with `x0` of
      shape (n,).
    - `x0`: the start, any real array-like (a list, numpy array; integers become the default
      float); at least one token. The solve runs in the dtype of `x0`: weights of a wider
      dtype (float64 weights with float32 tokens) are refused, not promoted, since promoting
      would silently change the precision of the run; cast one side (`x0.astype(...)` or the
      weights' `.astype(...)`). Weakly typed scalars such as `beta=1.0` follow `x0`.
    - `ts`: strictly increasing save times; the solve runs from `ts[0]` to `ts[-1]`.
    - `solver`: default `Renormalized(diffrax.Tsit5())` (adaptive, 5th order, PID steps, back
      on the sphere after every step). Any diffrax solver is accepted and, for sphere
      fields, wrapped in `Renormalized`. Fixed-step solvers (`NormalizedEuler`,
      `GeodesicEuler`, `RK4`) need `dt0`. Implicit ones (`diffrax.Kvaerno5()`) give their
      root finder `rtol`/`atol`; with `ConstantStepSize` it needs its own tolerances.
      The stages of an explicit solver on a sphere-field ODE evaluate the field at x/|x|
      (the same field on the sphere, constant along rays), which keeps the projection's stiff
      normal mode out of the step-size choice.
    - `dt0`: the constant step of fixed-step solvers; an optional first step otherwise.
    - `rtol`, `atol`: tolerances of the PID controller (adaptive solvers).
    - `max_steps`: bound on the number of steps (memory of the checkpointed adjoint grows
      with it, so keep it as small as works).
    - `adjoint`: how to differentiate: `diffrax.RecursiveCheckpointAdjoint()` (default, exact
      gradient of the discrete solve) or `diffrax.BacksolveAdjoint()` (O(1) memory).
    - `observe`: save `observe(x)` instead of full states (long sweeps need not store
      trajectories); `x` is on the sphere.
    - `stepsize_controller`: override the default PID/constant controller.
    - `throw`: raise if the solve fails (`max_steps` reached, or a saved state or observable
      is NaN or inf: an overflow); else check `.result` / `.succeeded`.
    - `noise`: None (an ODE), or a noise for sphere fields, `IndependentNoise(kappa)` or
      `CommonNoise(sigma)`, or their sum `IndependentNoise(kappa) + CommonNoise(sigma)`: the
      Stratonovich SDE dX = P_X(drift) dt + noise ∘ dW, projected
      back onto the sphere after every step. Needs `key` and `dt0` (constant steps unless a
      `stepsize_controller` is given); the default solver is then `diffrax.Heun()` (strong
      order 1/2, weak order 1). Stratonovich solvers (`Heun`, `EulerHeun`, `Midpoint`,
      `SPaRK`, `GeneralShARK`, `SlowRK`), the projected `diffrax.Euler` and `GeodesicEuler`
      converge to the same process; additive-noise, Milstein (commutative noise) and
      implicit solvers are refused. The Brownian path is a `diffrax.VirtualBrownianTree`
      on [ts[0], ts[-1]] with tolerance dt0/2: the same key gives the same path for every
      step size, so steps dt0 = (ts[-1] - ts[0])/2^k land on its nodes exactly.
    - `key`: the PRNG key of the Brownian motion (`jax.random.key(0)`); the solve is a
      deterministic function of it, and `jax.vmap` over keys gives independent samples.
    - `stop_when`: stop the solve when a condition holds (an event). Either a function
      `cond(t, x, args) -> real scalar` (x on the sphere for sphere fields), or a tuple/list
      of them: the solve stops at the first time one of them is >= 0, that is at its upward
      zero crossing, root-found by bisection on the solver's dense output (so
      exact to the solve's tolerance, not to the save grid), or at `ts[0]` when it already
      holds there. `tf.all_clustered(delta)` is the time at which `clustered_fraction`
      reaches 1; `tf.reaches(observable, level)` any other level. Or a `diffrax.Event`,
      passed through with diffrax's semantics (its direction, its root finder or none,
      boolean conditions; its conditions get `(t, x, args, **kwargs)`, x on the sphere).
      The result holds `event_time`, `event_mask` and `stopped`; saves after the stop are
      NaN. Works under `jax.jit` and `jax.vmap` (each system stops at its own time). Not
      with `noise` or `BacksolveAdjoint`; float32 tokens need `jax_enable_x64` off (a diffrax
      type clash under x64).

    Bad values (NaN/inf in `x0`, `ts`, β or the field's weights, `x0` off the sphere,
    `ts` not increasing, `rtol`/`atol`/`dt0` <= 0) raise a `ValueError` naming the argument
    when they are concrete, and an equinox runtime error with the same message when they are
    traced (under `jax.jit` or `jax.vmap`, where one bad batch entry fails the batch).

    **Returns:** a `Trajectory`.
    """
    if not isinstance(field, (AbstractSphereField, AbstractEuclideanField, AbstractAngleField)):
        raise ValueError(
            f"`field` must be a transformer_flows field (e.g. SelfAttention(beta=1.0)), got "
            f"{type(field).__name__}."
        )
    sphere = isinstance(field, AbstractSphereField)
    if noise is not None and solver is None:
        solver = diffrax.Heun()
    _check_noise(noise, key, field, solver, adjoint, dt0, sphere)
    _check_stop_when(stop_when, noise, adjoint)
    angles = isinstance(field, AbstractAngleField)
    solver = _resolve_solver(solver, sphere, angles, type(field).__name__)
    adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
    _check_options(
        solver, adaptive, dt0, rtol, atol, max_steps, adjoint, observe, stepsize_controller
    )
    x0 = as_float_array(x0, "x0")
    field.check_state(x0)
    _check_dtypes(field, x0)
    ts = as_float_array(ts, "ts").astype(x0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"`ts` must be a 1-d array of save times, got shape {ts.shape}.")
    field, x0, ts = _check_values(field, x0, ts, sphere)
    root_found = stop_when is not None and (
        not isinstance(stop_when, diffrax.Event) or stop_when.root_finder is not None
    )
    if root_found and jax.config.jax_enable_x64 and x0.dtype != jnp.float64:
        raise ValueError(
            f"`stop_when` on {x0.dtype.name} tokens needs jax_enable_x64 off: diffrax's event "
            "root find mixes a float64 literal into the crossing's value under x64 (a type "
            "error). Either solve in float64 (`x0.astype(jnp.float64)`) or in float32 with "
            "x64 disabled."
        )
    if stop_when is not None and not isinstance(stop_when, diffrax.Event):
        conditions = stop_when if isinstance(stop_when, (tuple, list)) else (stop_when,)
        for cond in conditions:
            _check_condition_value(jax.eval_shape(cond, ts[0], x0, args))
    solver = _prepare_for_adjoint(solver, adjoint)
    # Checked as given (before the cast), then cast to the dtype of the solve. Under vmap a
    # batch of tolerances is one traced array: the check then covers every entry.
    rtol, atol = (
        check_positive(_scalar(v, name), name) for name, v in (("rtol", rtol), ("atol", atol))
    )
    tolerances = jnp.asarray(rtol, x0.dtype), jnp.asarray(atol, x0.dtype)
    if dt0 is not None:
        dt0 = jnp.asarray(check_positive(_scalar(dt0, "dt0"), "dt0"), x0.dtype)
    return _solve(
        field,
        x0,
        ts,
        solver,
        dt0,
        tolerances,
        max_steps,
        adjoint,
        observe,
        stepsize_controller,
        args,
        throw,
        progress_meter,
        noise,
        key,
        stop_when,
    )


def _check_stop_when(stop_when, noise, adjoint) -> None:
    """Trace-time checks of `stop_when`: a diffrax `Event`, or one or more functions."""
    if stop_when is None or isinstance(stop_when, diffrax.Event):
        pass
    elif callable(stop_when):
        pass
    elif (
        isinstance(stop_when, (tuple, list))
        and len(stop_when) > 0
        and all(callable(cond) for cond in stop_when)
    ):
        pass
    else:
        raise ValueError(
            f"`stop_when` must be a condition `cond(t, x, args) -> scalar` (the solve stops "
            f"when it reaches 0 from below), e.g. tf.all_clustered(1e-3), a non-empty "
            f"tuple of them, or a diffrax.Event; got {stop_when!r:.80}."
        )
    if stop_when is not None and noise is not None:
        raise ValueError(
            "`stop_when` is not supported with `noise` yet (the crossing of a noisy path "
            "between steps is not defined by the step's interpolation); save finely and use "
            "`first_crossing_time` on the saved statistic."
        )
    if stop_when is not None and isinstance(adjoint, diffrax.BacksolveAdjoint):
        raise ValueError(
            "`stop_when` is not supported with `adjoint=BacksolveAdjoint()`; use the default "
            "RecursiveCheckpointAdjoint()."
        )


_DRIFT_ONLY_SOLVERS = (NormalizedEuler, ResidualLayers)
_UNSUITED_SDE_SOLVERS = (diffrax.ItoMilstein, diffrax.StratonovichMilstein)


def _check_noise(noise, key, field, solver, adjoint, dt0, sphere: bool) -> None:
    """Trace-time checks of the noisy solve (`noise=`, `key=`): which fields, solvers,
    adjoints and options it supports."""
    if noise is None:
        if key is not None:
            raise ValueError(
                "`key` was given without `noise`: the ODE solve is deterministic. Pass "
                "`noise=IndependentNoise(kappa)` (or `CommonNoise(sigma)`) for a noisy solve, "
                "or drop `key`."
            )
        return
    if not isinstance(noise, AbstractNoise):
        raise ValueError(
            f"`noise` must be a transformer_flows noise such as IndependentNoise(kappa=10.0) or "
            f"CommonNoise(sigma=1.0), got {noise!r}."
        )
    if not sphere:
        raise ValueError(
            f"`noise=` is supported for sphere fields only (SelfAttention, "
            f"UnnormalizedSelfAttention, ...), got {type(field).__name__}. For an angle field "
            "convert the angles to points (`angles_to_points`) and use a sphere field."
        )
    if key is None:
        raise ValueError(
            "`noise` needs `key`, the PRNG key of the Brownian motion, e.g. "
            "key=jax.random.key(0); vmap over keys for independent samples."
        )
    key_dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    typed = key_dtype is not None and jax.dtypes.issubdtype(key_dtype, jax.dtypes.prng_key)
    typed = typed and shape == ()
    raw = key_dtype == jnp.uint32 and shape == (2,)
    if not (typed or raw):
        raise ValueError(
            f"`key` must be one PRNG key such as jax.random.key(0), got {key!r:.80}; for a "
            "batch of keys `jax.vmap` over the solve."
        )
    if dt0 is None:
        raise ValueError(
            "`noise` needs `dt0`, the step of the SDE solver (constant steps), e.g. dt0=0.01; "
            "the Brownian path is resolved to dt0/2."
        )
    inner = _unwrapped(solver)
    if isinstance(inner, _DRIFT_ONLY_SOLVERS):
        raise ValueError(
            f"`solver={type(inner).__name__}()` steps the drift only and cannot take noise; "
            "use diffrax.Heun() (the default with noise), diffrax.EulerHeun() or "
            "GeodesicEuler()."
        )
    additive = isinstance(inner, diffrax.AbstractSRK) and inner.tableau.is_additive_noise()
    if additive or isinstance(inner, _UNSUITED_SDE_SOLVERS):
        need = "additive" if additive else "commutative"
        raise ValueError(
            f"`solver={type(inner).__name__}()` assumes {need} noise; the sphere noise is "
            "multiplicative and non-commutative. Use diffrax.Heun(), EulerHeun(), SPaRK() or "
            "GeneralShARK()."
        )
    if isinstance(inner, (diffrax.AbstractImplicitSolver, diffrax.AbstractFosterLangevinSRK)):
        raise ValueError(
            f"`solver={type(inner).__name__}()` is not supported with `noise`; use an explicit "
            "SDE solver such as diffrax.Heun(), EulerHeun() or SPaRK()."
        )
    if isinstance(adjoint, (diffrax.BacksolveAdjoint, diffrax.ImplicitAdjoint)):
        raise ValueError(
            f"`adjoint={type(adjoint).__name__}()` is not supported with `noise` (the backward "
            "solve of a projected SDE is not its adjoint); use the default "
            "RecursiveCheckpointAdjoint() (pathwise gradients of the discrete solve), "
            "DirectAdjoint() or ForwardMode()."
        )


def _unwrapped(solver: diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """The solver that steps: the one inside `Renormalized`, or `solver` itself."""
    return solver.solver if isinstance(solver, Renormalized) else solver


def _resolve_solver(solver, sphere: bool, angles: bool, field_name: str) -> diffrax.AbstractSolver:
    if solver is None:
        solver = diffrax.Tsit5()
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` must be a diffrax solver (e.g. diffrax.Tsit5(), NormalizedEuler()), "
            f"got {solver!r}."
        )
    if angles and isinstance(solver, ResidualLayers):
        raise ValueError(
            f"`solver=ResidualLayers()` steps a field's discrete layer on points; {field_name} "
            "moves angles and has none: use an ordinary solver such as diffrax.Tsit5() or RK4()."
        )
    if not sphere:
        if isinstance(solver, (NormalizedEuler, GeodesicEuler)):
            raise ValueError(
                f"`solver={type(solver).__name__}()` steps points on a sphere; {field_name} "
                "does not keep its state on a sphere: use an ordinary solver such as "
                "diffrax.Tsit5() or RK4()"
                + ("." if angles else ", or ResidualLayers() for the discrete layers.")
            )
        return _unwrapped(solver)
    return solver if isinstance(solver, _SPHERE_PRESERVING) else Renormalized(solver)


def _prepare_for_adjoint(solver, adjoint):
    """DirectAdjoint/ForwardMode need a Runge–Kutta stage loop they can differentiate; diffrax
    sets it on the solver it is given, so set it on the solver inside `Renormalized` here."""
    scan_kind = {diffrax.DirectAdjoint: "bounded", diffrax.ForwardMode: "lax"}.get(type(adjoint))
    inner = solver.solver if isinstance(solver, Renormalized) else None
    if scan_kind and isinstance(inner, diffrax.AbstractRungeKutta) and inner.scan_kind is None:
        solver = eqx.tree_at(
            lambda s: s.solver.scan_kind, solver, scan_kind, is_leaf=lambda leaf: leaf is None
        )
    return solver


def _check_options(
    solver, adaptive, dt0, rtol, atol, max_steps, adjoint, observe, stepsize_controller
) -> None:
    if not adaptive and dt0 is None and stepsize_controller is None:
        raise ValueError(
            f"`solver={type(solver).__name__}()` has a fixed step: pass `dt0`, e.g. dt0=0.1 "
            "(the authors' step)."
        )
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")
    if not isinstance(adjoint, diffrax.AbstractAdjoint):
        raise ValueError(
            f"`adjoint` must be a diffrax adjoint such as diffrax.RecursiveCheckpointAdjoint() "
            f"or diffrax.BacksolveAdjoint(), got {adjoint!r}."
        )
    inner = _unwrapped(solver)
    if (
        isinstance(adjoint, diffrax.BacksolveAdjoint)
        and isinstance(inner, AbstractFixedStepSolver)
        and not inner.supports_backsolve
    ):
        raise ValueError(
            f"`adjoint=BacksolveAdjoint()` integrates an augmented adjoint state, which "
            f"`{type(inner).__name__}` cannot step; use the default RecursiveCheckpointAdjoint."
        )
    if observe is not None and not callable(observe):
        raise ValueError(f"`observe` must be a function of the state, got {observe!r}.")
    if stepsize_controller is not None and not isinstance(
        stepsize_controller, diffrax.AbstractStepSizeController
    ):
        raise ValueError(
            f"`stepsize_controller` must be a diffrax step-size controller, got "
            f"{stepsize_controller!r}."
        )


def _check_dtypes(field, x0) -> None:
    """The solve runs in `x0.dtype`; a weight that would promote it (float64 weights with
    float32 tokens) would otherwise surface as an opaque dtype error deep inside diffrax."""
    arrays = eqx.filter(field, eqx.is_inexact_array)
    for path, leaf in jax.tree_util.tree_leaves_with_path(arrays):
        name = f"field{jax.tree_util.keystr(path)}"
        dtype = jnp.result_type(leaf)  # weakly typed scalars (beta=1.0) follow x0
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError(
                f"`{name}` has complex dtype {dtype.name}; weights must be real. Rebuild the "
                "field from real weights (e.g. `jnp.real(V)`)."
            )
        weak = getattr(leaf, "weak_type", False)
        # numpy's promotion: the check itself must not trip strict dtype promotion.
        if not weak and np.promote_types(dtype, x0.dtype) != x0.dtype:
            raise ValueError(
                f"`{name}` has dtype {dtype.name} but `x0` has dtype {x0.dtype.name}; the solve "
                f"runs in the dtype of `x0` and does not promote silently. Either cast the "
                f"tokens, `x0.astype(jnp.{dtype.name})`, or build the field from weights of "
                f"the tokens' dtype, e.g. `V.astype(jnp.{x0.dtype.name})`."
            )


_WEIGHT_FIX = "Rebuild the field from finite weights (after training, check the updates)."


class _RadialExtension(AbstractSphereField):
    """`field` evaluated at x/|x|: the same vector field on the sphere, constant along rays.

    Why: `AbstractSphereField.__call__` is P_x a(x) = a - <x, a> x, whose extension off the
    sphere has, along x_i, the eigenvalue -2<x_i, a_i> (the derivative of -<x, a> x along x
    at |x| = 1); at a cluster on the top eigenvector of a Wishart V (Fig. 5, d = 128) that is
    -2λ_max(V) ≈ -90, twice the stiffest tangent eigenvalue -λ_max. An explicit
    solver's stages leave the sphere by O(h), so they see that mode although every accepted
    state is renormalised, and the step is cut to half what the flow on the sphere needs
    (measured: Tsit5 at 1e-4 takes ~1260 steps instead of ~420 there). At x/|x| the normal
    eigenvalue is 0. Fixed-step layer solvers call `drift`/`residual_layer`, which pass
    through unchanged. Used for explicit solvers only (see `_solve`)."""

    field: AbstractSphereField

    def drift(self, t, x, args=None):
        return self.field.drift(t, x, args)

    def jump_times(self):
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)

    def residual_layer(self, t, x, h, args=None):
        return self.field.residual_layer(t, x, h, args)

    def __call__(self, t, x, args=None):
        return self.field(t, normalize(x), args)


def _check_field(field):
    """The field with every inexact leaf checked finite (β, a leaf named `beta`, with the
    message of its converter: any finite real is allowed, β < 0 being the repulsive softmax).
    Concrete leaves are checked now and returned as they are; traced ones carry an
    `eqx.error_if`, so the rebuilt field must be the one that is solved."""

    def check(path, leaf):
        if not eqx.is_inexact_array(leaf):
            return leaf
        key = jax.tree_util.keystr(path)
        return check_finite(leaf, f"field{key}", BETA_FIX if key == ".beta" else _WEIGHT_FIX)

    return jax.tree_util.tree_map_with_path(check, field)


def _scalar(value, name: str):
    """`value` as a float array of shape () (per call: `jax.vmap` maps a batch of them)."""
    array = as_float_array(value, name)
    if array.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar, got shape {array.shape}; to sweep it, `jax.vmap` "
            "over `solve`."
        )
    return array


def _check_values(field, x0, ts, sphere: bool):
    """Value checks: raised now when the values are concrete, else at run time under jit.
    Returns the checked (field, x0, ts): under jit the checks live only in these values."""
    field = _check_field(field)
    x0 = check_finite(x0, "x0")
    if sphere:
        x0 = check_on_sphere(x0, "x0")
    ts = check_finite(ts, "ts", "Save times must be finite, e.g. jnp.linspace(0, 10, 101).")
    ts = check_condition(
        ts,
        jnp.any(jnp.diff(ts) <= 0),
        "`ts` must be strictly increasing (it holds the save times from t0 to t1).",
    )
    return field, x0, ts


@eqx.filter_jit
def _solve(
    field,
    x0,
    ts,
    solver,
    dt0,
    tolerances,
    max_steps,
    adjoint,
    observe,
    stepsize_controller,
    args,
    throw,
    progress_meter,
    noise,
    key,
    stop_when=None,
) -> Trajectory:
    sphere = isinstance(field, AbstractSphereField)
    if stepsize_controller is None:
        if noise is not None:
            stepsize_controller = diffrax.ConstantStepSize()
        elif isinstance(solver, diffrax.AbstractAdaptiveSolver):
            rtol, atol = tolerances
            stepsize_controller = diffrax.PIDController(
                rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4
            )
            jumps = None if isinstance(field, AbstractAngleField) else field.jump_times()
            if jumps is not None:
                # Step to just before and just after each layer boundary, so that no stage
                # of a step reads the next layer's weights. (Fixed-step solvers keep their
                # stage times inside the step instead; see `_fixed_step.py`.)
                stepsize_controller = diffrax.ClipStepSizeController(
                    stepsize_controller, jump_ts=jumps.astype(ts.dtype)
                )
        else:
            stepsize_controller = diffrax.ConstantStepSize()

    def on_sphere(y):
        return normalize(y) if sphere else y

    # BacksolveAdjoint differentiates saved states only, so observe afterwards there.
    observe_inside = observe is not None and not isinstance(adjoint, diffrax.BacksolveAdjoint)
    if observe_inside:
        # diffrax pre-fills its save buffers with inf, which integer outputs (cluster counts)
        # cannot hold: save those as floats and cast back (exact below 2^24 / 2^53).
        observed_shapes = jax.eval_shape(observe, x0)

        def observe_as_float(t, y, args):
            y, finite = _finite_or_placeholder(y, angles=isinstance(field, AbstractAngleField))
            observed = jax.tree_util.tree_map(
                lambda v: v if jnp.issubdtype(v.dtype, jnp.inexact) else v.astype(x0.dtype),
                observe(on_sphere(y)),
            )
            # 0, or NaN where the state itself is not finite (an integer count of NaN states
            # is finite): the overflow check below reads it.
            return observed, jnp.where(finite, 0, jnp.nan).astype(x0.dtype)

        saveat = _save_at(ts, observe_as_float, stop_when is not None)
    elif isinstance(adjoint, diffrax.BacksolveAdjoint):
        saveat = _save_at(ts, None)
    else:
        saveat = _save_at(ts, lambda t, y, args: on_sphere(y), stop_when is not None)
    event = None if stop_when is None else _event(stop_when, on_sphere, x0.dtype)
    # Explicit ODE solves see the field through its radial extension (`_RadialExtension`):
    # the same field on the sphere, without the spurious stiff normal mode off it. Implicit
    # solvers keep the field as it is: they are not stability-limited, and that mode damps
    # the drift off the sphere inside their root finding (Kvaerno5's chord iteration fails
    # to converge on a stiff USA consensus without it).
    radial = (
        sphere
        and noise is None
        and not isinstance(_unwrapped(solver), diffrax.AbstractImplicitSolver)
    )
    terms = diffrax.ODETerm(_RadialExtension(field) if radial else field)
    if noise is not None:
        terms = diffrax.MultiTerm(
            terms, NoiseTerm(noise, _brownian_path(noise, solver, x0, ts, dt0, key))
        )
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=x0,
        args=args,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
        progress_meter=progress_meter,
        event=event,
    )
    event_time = event_mask = None
    if event is not None:
        solution, event_time, event_mask = _stopped(solution, stop_when, ts, on_sphere(x0), args)
    if observe_inside:
        xs = None
        observed = solution.ys[0]
        if event is None:  # with an event the masked saves are NaN: integers stay floats
            observed = jax.tree_util.tree_map(
                lambda v, shape: v.astype(shape.dtype), observed, observed_shapes
            )
    else:
        xs = jax.vmap(on_sphere)(solution.ys)
        observed = None
        if observe is not None:
            angles = isinstance(field, AbstractAngleField)
            safe = jax.vmap(lambda x: _finite_or_placeholder(x, angles=angles)[0])(xs)
            xs, observed = None, jax.vmap(observe)(safe)  # solution.ys keeps the states
    # The raw saves: the states, or (observed inside) the observations saved as floats and a
    # NaN where the state was not finite.
    saved = (solution.ys, xs, observed)
    if event is None:
        result, (_, xs, observed) = finite_result(solution.result, saved, throw)
    else:
        # An event is success; the saves after it are masked: checked as 0, returned as NaN.
        keep = ts <= event_time
        stopped = solution.result == diffrax.RESULTS.event_occurred
        result = diffrax.RESULTS.where(stopped, diffrax.RESULTS.successful, solution.result)
        result, saved = finite_result(result, _masked(saved, keep, 0), throw)
        _, xs, observed = _masked(saved, keep, jnp.nan)
    return Trajectory(
        ts=ts,
        xs=xs,
        observed=observed,
        stats=dict(solution.stats),
        result=result,
        event_time=event_time,
        event_mask=event_mask,
    )


def _masked(saved, keep, fill):
    """`saved` (leaves with the save times leading) with the inexact entries of the saves
    where `keep` is False set to `fill`."""

    def mask(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        where = keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))
        return jnp.where(where, leaf, jnp.asarray(fill, leaf.dtype))

    return jax.tree_util.tree_map(mask, saved)


class _OnSphere(eqx.Module):
    """A stopping condition evaluated on the state as the user sees it (on the sphere for
    sphere fields: the dense output between steps is not), called the way diffrax calls
    `Event.cond_fn` (keywords, and extra keywords that user conditions need not take)."""

    cond: Callable
    on_sphere: Callable
    passthrough: bool = eqx.field(static=True)

    def __call__(self, t, y, args, **kwargs):
        x = self.on_sphere(y)
        if self.passthrough:
            return self.cond(t, x, args, **kwargs)
        return self.cond(t, x, args)


def _root_tolerance(dtype) -> float:
    """Tolerance of the crossing's bisection, on t (relative and absolute) and on the
    condition's value: 1e-10 in float64, 32 ulps (4e-6) in float32, where the condition's
    rounding noise (~1e-7 for a cosine) must stay below it."""
    return max(1e-10, 32 * float(jnp.finfo(dtype).eps))


def _event(stop_when, on_sphere, dtype) -> diffrax.Event:
    if isinstance(stop_when, diffrax.Event):
        cond_fn = jax.tree_util.tree_map(
            lambda cond: _OnSphere(cond, on_sphere, True), stop_when.cond_fn, is_leaf=callable
        )
        return diffrax.Event(cond_fn, stop_when.root_finder, stop_when.direction)
    conditions = tuple(stop_when) if isinstance(stop_when, (tuple, list)) else stop_when
    cond_fn = jax.tree_util.tree_map(
        lambda cond: _OnSphere(cond, on_sphere, False), conditions, is_leaf=callable
    )
    tol = _root_tolerance(dtype)
    return diffrax.Event(cond_fn, CrossingBisection(rtol=tol, atol=tol), direction=True)


def _stopped(solution, stop_when, ts, x0, args):
    """(solution with its saves at `ts` only, event time, event mask). Conditions given as
    functions that already hold at ts[0] stop the solve there (diffrax fires on a sign change
    only): the first of them in order is the event, and every later save is masked."""
    event_time = solution.ts[1][0]
    event_mask = solution.event_mask
    if not isinstance(stop_when, diffrax.Event):
        conditions = tuple(stop_when) if isinstance(stop_when, (tuple, list)) else (stop_when,)
        at_start = [cond(ts[0], x0, args) >= 0 for cond in conditions]
        first, before = [], jnp.asarray(False)
        for held in at_start:
            first.append(held & ~before)
            before = before | held
        masks = event_mask if isinstance(stop_when, (tuple, list)) else (event_mask,)
        masks = [jnp.where(before, f, m) for f, m in zip(first, masks, strict=True)]
        event_mask = type(stop_when)(masks) if isinstance(stop_when, (tuple, list)) else masks[0]
        event_time = jnp.where(before, ts[0], event_time)
    solution = eqx.tree_at(lambda s: (s.ts, s.ys), solution, (solution.ts[0], solution.ys[0]))
    return solution, event_time, event_mask


def _check_condition_value(value) -> None:
    """Refuse a condition whose value (its `jax.eval_shape`) is not a real scalar."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"a `stop_when` condition must return a real scalar (the solve stops when it "
            f"reaches 0 from below), got {value}; for a boolean condition pass "
            "diffrax.Event(cond) (it stops at the end of the step where cond is True)."
        )


def _finite_or_placeholder(y, *, angles: bool):
    """(y, True) if `y` is finite, else (a valid placeholder state, False): observables never
    see an overflowed state (their own checks would raise on it; the solve is marked
    `RESULTS.overflow` instead)."""
    finite = jnp.all(jnp.isfinite(y))
    placeholder = jnp.zeros_like(y) if angles else jnp.zeros_like(y).at[..., 0].set(1)
    return jnp.where(finite, y, placeholder), finite


def _save_at(ts, fn, event: bool = False) -> diffrax.SaveAt:
    """Save at `ts`. Two save times are the two ends of the solve: saved as the start and the
    last step's state (`t0=True, t1=True`) rather than by interpolating inside the last step,
    which leaves the save loop, its dense output and their derivatives out of the program
    (fits solve over [0, T] and read x(T) only). With an event (which can end the solve
    before ts[-1]) always at `ts`, and the end time as a second save."""
    if event:
        return diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=ts, fn=fn), diffrax.SubSaveAt(t1=True, fn=_time)]
        )
    where = dict(t0=True, t1=True) if ts.shape[0] == 2 else dict(ts=ts)
    return diffrax.SaveAt(**where) if fn is None else diffrax.SaveAt(**where, fn=fn)


def _time(t, y, args):
    return t


def _brownian_path(noise, solver, x0, ts, dt0, key) -> diffrax.VirtualBrownianTree:
    """The Brownian motion of `noise` on [ts[0], ts[-1]], resolved to dt0/2, with the Lévy
    area the solver needs (space-time for SPaRK/GeneralShARK/SlowRK)."""
    inner = _unwrapped(solver)
    levy_area = getattr(inner, "minimal_levy_area", diffrax.BrownianIncrement)
    if levy_area is diffrax.AbstractSpaceTimeLevyArea:
        levy_area = diffrax.SpaceTimeLevyArea
    elif levy_area is diffrax.AbstractSpaceTimeTimeLevyArea:
        levy_area = diffrax.SpaceTimeTimeLevyArea
    elif levy_area is diffrax.AbstractBrownianIncrement:
        levy_area = diffrax.BrownianIncrement
    t0, t1 = ts[0], ts[-1]
    t1 = jnp.where(t1 > t0, t1, t0 + dt0)  # one save time: any non-empty interval
    return diffrax.VirtualBrownianTree(
        t0, t1, tol=dt0 / 2, shape=noise.brownian_shape(x0), key=key, levy_area=levy_area
    )
