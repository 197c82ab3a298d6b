"""Stopping conditions for `solve(..., stop_when=...)`: a solve stops at the first time a
condition holds, with that time root-found on the solver's dense output (diffrax `Event`).

A condition is a function `cond(t, x, args) -> scalar`; the solve stops at the first time
cond ≥ 0 (its upward zero crossing, or `ts[0]` when it already holds there). `reaches` builds
one from an observable and a level; `all_clustered` is the ready-made "every pair is
clustered" condition, i.e. `clustered_fraction(x, delta)` reaching 1.
"""

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float

from ._observables import gram
from ._validation import is_concrete

Configuration = Float[Array, "n d"] | Float[Array, " n"]


class LevelCrossing(eqx.Module):
    """The condition "`observable(x)` has reached `level`": `observable(x) − level`
    (direction "up") or `level − observable(x)` ("down"), which is ≥ 0 exactly when the level
    is reached. Build it with `reaches` or `all_clustered`; pass it as `stop_when=`."""

    observable: Callable[[Array], Array] = eqx.field(static=True)
    level: Float[Array, ""]
    direction: str = eqx.field(static=True)

    def __call__(self, t, x, args=None) -> Float[Array, ""]:
        value = jnp.asarray(self.observable(x))
        level = self.level.astype(value.dtype)
        return value - level if self.direction == "up" else level - value


def reaches(
    observable: Callable[[Array], Array], level: Float[ArrayLike, ""], *, direction: str = "up"
) -> LevelCrossing:
    """The stopping condition "`observable(x)` reaches `level`" for `solve(stop_when=...)`.

    **Arguments:**
    - `observable`: a scalar, real function of the state (points (n, d) on the sphere, or
      angles (n,)), continuous along solutions: the crossing is root-found, so a piecewise
      constant statistic (`clustered_fraction`, `count_clusters`) gives only its jump at the
      end of a step. Use a continuous surrogate (`all_clustered`, `mean_cosine`, `energy`).
    - `level`: the level, a real scalar (an array under `jax.vmap`: one level per system).
    - `direction`: "up" (stop at the first time observable ≥ level) or "down" (≤ level).
    """
    if direction not in ("up", "down"):
        raise ValueError(f"`direction` must be 'up' or 'down', got {direction!r}.")
    if not callable(observable):
        raise ValueError(
            f"`observable` must be a function of the state, e.g. tf.mean_cosine, got "
            f"{observable!r:.80}."
        )
    level = jnp.asarray(level)
    if level.shape != () or not jnp.issubdtype(level.dtype, jnp.number):
        raise ValueError(
            f"`level` must be a real scalar, got {level!r:.80}; to sweep it, `jax.vmap` over "
            "the solve."
        )
    if not jnp.issubdtype(level.dtype, jnp.floating):
        level = level.astype(float)
    return LevelCrossing(observable, level, direction)


def min_cosine(x: Configuration) -> Float[Array, ""]:
    """min over pairs i ≠ j of ⟨x_i, x_j⟩ (angles θ: min cos(θ_i − θ_j)); 1 for one token.

    `clustered_fraction(x, delta) == 1` exactly when min_cosine(x) ≥ 1 − δ, and unlike the
    fraction (a step function of time) the minimum is continuous and piecewise smooth along
    solutions, so its crossing of 1 − δ can be root-found."""
    g = gram(x)
    n = g.shape[0]
    return jnp.min(jnp.where(jnp.eye(n, dtype=bool), jnp.ones((), g.dtype), g))


def all_clustered(delta: Float[ArrayLike, ""] = 1e-3) -> LevelCrossing:
    """Stop when every pair is clustered, i.e. when `clustered_fraction(x, delta)` reaches 1:
    the condition min_{i≠j} ⟨x_i, x_j⟩ − (1 − δ) ≥ 0 (`min_cosine`), root-found.

    Example, the time to cluster of each system in a batch of β:

        stop = tf.all_clustered(1e-3)
        traj = jax.vmap(lambda b: tf.solve(tf.SelfAttention(b), x0, ts, stop_when=stop))(betas)
        traj.event_time   # (B,): the crossing, or ts[-1] where it never came (traj.stopped)
    """
    delta = jnp.asarray(delta)
    if delta.shape != () or not jnp.issubdtype(delta.dtype, jnp.number):
        raise ValueError(f"`delta` must be a real scalar in [0, 2], got {delta!r:.80}.")
    if is_concrete(delta) and not 0 <= float(delta) <= 2:
        raise ValueError(
            f"`delta` must lie in [0, 2] (pairs count as clustered when <x_i,x_j> >= 1 - delta), "
            f"got {float(delta)}; the paper uses delta=1e-3."
        )
    if not jnp.issubdtype(delta.dtype, jnp.floating):
        delta = delta.astype(float)
    return reaches(min_cosine, 1 - delta)


class _BracketState(eqx.Module):
    lower: Float[Array, ""]
    upper: Float[Array, ""]
    decreasing: Bool[Array, ""]


class CrossingBisection(optx.AbstractRootFinder):
    """Bisection on the step that saw a condition change sign (diffrax passes it as the
    `lower`/`upper` options), stopping when the bracket is below `atol + rtol·|t|`.

    Why not `optimistix.Newton` or `optimistix.Bisection`: Newton's steps, noise/slope, never
    settle where a condition is flat and rounded (float32 near consensus hit its max_steps),
    and it can cycle on a kink (the min over pairs switching pairs); `Bisection(flip="detect")`
    refuses a bracket whose end value is exactly 0, which is what diffrax hands every system of
    a vmapped batch that has *not* stopped (the function t_end − t): this one follows that
    decreasing function to its root t_end exactly, so those systems end at `ts[-1]`."""

    rtol: float
    atol: float
    norm: ClassVar[Callable] = jnp.abs

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _BracketState:
        del y, aux_struct, tags
        dtype = jax.tree_util.tree_leaves(f_struct)[0].dtype
        lower = jnp.asarray(options["lower"], dtype)
        upper = jnp.asarray(options["upper"], dtype)
        lower_value, _ = _scalar(fn, lower, args)
        upper_value, _ = _scalar(fn, upper, args)
        return _BracketState(lower, upper, lower_value > upper_value)

    def step(self, fn, y, args, options, state: _BracketState, tags):
        del y, options, tags
        middle = state.lower + 0.5 * (state.upper - state.lower)
        value, aux = _scalar(fn, middle, args)
        below = state.decreasing ^ (value < 0)  # the root lies above `middle`
        lower = jnp.where(below, middle, state.lower)
        upper = jnp.where(below, state.upper, middle)
        state = _BracketState(lower, upper, state.decreasing)
        return self._answer(state), state, aux

    def terminate(self, fn, y, args, options, state: _BracketState, tags):
        del fn, args, options, tags
        width = state.upper - state.lower
        return width <= self.atol + self.rtol * jnp.abs(y), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result) -> tuple[Any, Any, dict]:
        return y, aux, {}

    @staticmethod
    def _answer(state: _BracketState):
        """The upper end: never before the crossing (diffrax drops the saves after the answer),
        and exactly t_end for a system that did not stop."""
        return state.upper


def _scalar(fn, t, args):
    """diffrax's event function at t as one scalar: with several conditions it returns one
    value per condition, all 0 but the one that fired (or all t_end − t when none did)."""
    values, aux = fn(t, args)
    leaves = jax.tree_util.tree_leaves(values)
    return functools.reduce(jnp.add, leaves), aux
