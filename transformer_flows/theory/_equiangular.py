"""Theorem 6.8: from orthonormal tokens all pairwise cosines stay equal to γ_β(t), with
  (SA)  γ̇ = 2 (1-γ)((n-1)γ+1) / (e^{β(1-γ)} + n - 1),      (6.9)
  (USA) γ̇ = (2/n) e^{βγ} (1-γ)((n-1)γ+1),                   (6.10)
γ(0) = 0; its level set γ_β(t) = 1 - δ is the limiting phase boundary Γ_{∞,δ} (6.12).

Both equations are solved for the log-gap u = -log(1 - γ), s = 1 - γ = e^{-u}:
  (SA)  u̇ = 2 (n - (n-1)s) / (e^{βs} + n - 1),    (USA)  u̇ = (2/n) e^{β(1-s)} (n - (n-1)s).
The right-hand sides are bounded and increasing in u, so the problem is not stiff even for
USA at large β (where γ̇ = O(e^β (1-γ)) is), and 1 - γ keeps full relative accuracy near 1.
Clustering times are the quadrature t(U) = ∫_0^U du / u̇, U = -log δ.

These are JAX functions (diffrax, Tsit5 with rtol = atol = 1e-12 in float64, 1e-6 in
float32): jit/vmap-able in β and δ (`n` is a Python int, `model` a string), returning
arrays of the default float dtype. Enable float64 (`jax.config.update("jax_enable_x64",
True)`) for ~1e-11 accuracy; float32 gives ~1e-6.
"""

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import check_condition
from ._checks import (
    Numbers,
    check_beta_jax,
    check_count,
    check_delta_jax,
    check_model,
    check_times,
)

_MAX_STEPS = 16_384
_BISECTIONS = 64


def _log_gap_rate(u, n, beta, softmax):
    """u̇ as a function of u = -log(1 - γ); `softmax` (a traced bool) picks SA over USA, so
    both models share one compiled program."""
    s = jnp.exp(-u)
    attracted = n - (n - 1) * s
    sa = 2 * attracted / (jnp.exp(beta * s) + n - 1)
    usa = (2 / n) * jnp.exp(beta * (1 - s)) * attracted
    return jnp.where(softmax, sa, usa)


def _controller(dtype) -> diffrax.PIDController:
    tolerance = 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-6
    return diffrax.PIDController(rtol=tolerance, atol=tolerance)


def _cosine_one_beta(ts, n, beta, softmax):
    def rate(t, u, args):
        return _log_gap_rate(u, n, beta, softmax)

    # t1 > t0 even when every requested time is 0.
    t1 = jnp.maximum(ts[-1], jnp.finfo(ts.dtype).tiny)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(rate),
        diffrax.Tsit5(),
        t0=jnp.zeros((), ts.dtype),
        t1=t1,
        dt0=None,
        y0=jnp.zeros((), ts.dtype),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=_controller(ts.dtype),
        max_steps=_MAX_STEPS,
    )
    return solution.ys  # the log-gap u(t) = -log(1 - γ(t))


def _time_one(n, beta, delta, softmax):
    """t at which γ = 1 - δ: ∫_0^U du/u̇(u), integrated in σ = u/U ∈ [0, 1]."""
    total = -jnp.log(delta)

    def slowness(sigma, t, args):
        return total / _log_gap_rate(total * sigma, n, beta, softmax)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(slowness),
        diffrax.Tsit5(),
        t0=jnp.zeros((), beta.dtype),
        t1=jnp.ones((), beta.dtype),
        dt0=None,
        y0=jnp.zeros((), beta.dtype),
        stepsize_controller=_controller(beta.dtype),
        max_steps=_MAX_STEPS,
    )
    return solution.ys[-1]


@jax.jit
def _log_gaps(ts, n, betas, softmax):
    return jax.vmap(lambda b: _cosine_one_beta(ts, n, b, softmax))(betas)


def _times(n, betas, deltas, softmax):
    return jax.vmap(lambda b, e: _time_one(n, b, e, softmax))(betas, deltas)


_times_jit = jax.jit(_times)


def _dtype():
    return jnp.result_type(float)


def equiangular_cosine(
    ts: Numbers,
    n: int,
    beta: Numbers,
    model: str,
) -> Float[Array, "*betas times"]:
    """γ_β(t): the common cosine <x_i(t), x_j(t)>, i ≠ j, of n tokens started orthonormal
    (Thm 6.8; SA: (6.9), USA: (6.10)). At β = 0 (both models)
    γ(t) = (e^{2t} - 1)/(e^{2t} + n - 1).

    **Arguments:** `ts` non-decreasing times >= 0 (the solve starts at t = 0), `n >= 2`,
    `beta >= 0` (scalar or array), `model` "SA" or "USA".

    **Returns:** shape `beta.shape + ts.shape`.
    """
    return -jnp.expm1(-_log_gap(ts, n, beta, model))


def equiangular_gap(
    ts: Numbers,
    n: int,
    beta: Numbers,
    model: str,
) -> Float[Array, "*betas times"]:
    """1 - γ_β(t), with full relative accuracy where γ rounds to 1 (1 - γ < 1e-16): the
    quantity clustering rates and plateau widths are read from. At β = 0,
    1 - γ = n/(e^{2t} + n - 1). Arguments as `equiangular_cosine`."""
    return jnp.exp(-_log_gap(ts, n, beta, model))


def _log_gap(ts, n, beta, model):
    model = check_model(model)
    n = check_count(n, "n", 2)
    ts = check_times(ts, _dtype())
    beta = check_beta_jax(beta, ts.dtype)
    # n is passed as an array so that every n shares one compiled program.
    values = _log_gaps(ts, jnp.asarray(n, ts.dtype), beta.reshape(-1), jnp.asarray(model == "SA"))
    return values.reshape(beta.shape + ts.shape)


def clustering_time(
    n: int,
    beta: Numbers,
    delta: Numbers,
    model: str,
) -> Float[Array, "*shape"]:
    """The time t* with γ_β(t*) = 1 - δ (the equiangular tokens' pairs all count as
    clustered at threshold δ from then on, since γ_β increases). At β = 0,
    t* = (1/2) ln((n - (n-1)δ)/δ): 5.186 for n = 32, δ = 1e-3. SA slows down with β
    (t* ~ e^β), USA speeds up. `beta` and `delta` (in (0, 1]) broadcast.
    """
    model = check_model(model)
    n = check_count(n, "n", 2)
    beta = check_beta_jax(beta, _dtype())
    delta = check_delta_jax(delta, beta.dtype)
    beta, delta = jnp.broadcast_arrays(beta, delta)
    size = jnp.asarray(n, beta.dtype)
    softmax = jnp.asarray(model == "SA")
    return _times_jit(size, beta.reshape(-1), delta.reshape(-1), softmax).reshape(beta.shape)


def phase_boundary(
    ts: Numbers,
    n: int,
    delta: Numbers,
    betas: Numbers,
    *,
    model: str = "SA",
) -> Float[Array, " times"]:
    """The limiting phase boundary Γ_{∞,δ} = {(t, β) : γ_β(t) = 1 - δ} (6.12) as a curve β(t).

    For SA, γ_β(t) decreases in β, so the clustered set {β : γ_β(t) >= 1 - δ} is an interval
    below the curve and the curve is its largest β (the definition of the authors'
    curve.ipynb, which scans a 50-point β grid). Here it is exact: the clustering times
    t*(β) on the grid `betas` bracket the root of t*(β) = t, which is then found by
    bisection to machine precision, so any grid works (its end points set the searched
    range; interior points only narrow the brackets).

    **Returns**, for each t in `ts`: the boundary β within [betas[0], betas[-1]]; betas[-1]
    when every β in the range has clustered by t; NaN when none has. With `model="USA"`,
    γ_β increases in β, the clustered set lies above the curve, and the boundary is its
    smallest β (betas[0] when all have clustered).
    """
    model = check_model(model)
    n = check_count(n, "n", 2)
    ts = check_times(ts, _dtype())
    delta = check_delta_jax(delta, ts.dtype)
    if delta.ndim != 0:
        raise ValueError(f"`delta` must be a scalar, got shape {delta.shape}.")
    betas = check_beta_jax(betas, ts.dtype)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(
            f"`betas` must be a 1-d grid of at least 2 increasing values (the searched "
            f"range), e.g. jnp.linspace(0, 9, 10); got shape {betas.shape}."
        )
    betas = check_condition(
        betas, jnp.any(jnp.diff(betas) <= 0), "`betas` must be strictly increasing."
    )
    return _boundary(ts, jnp.asarray(n, ts.dtype), delta, betas, jnp.asarray(model == "SA"))


@jax.jit
def _boundary(ts, n, delta, betas, softmax):
    grid_times = _times(n, betas, jnp.full_like(betas, delta), softmax)
    size = betas.shape[0]
    # Number of grid β clustered by each t (grid times are monotone in β): a prefix of the
    # grid for SA (t* increases with β), a suffix for USA.
    clustered = jnp.sum(grid_times[None, :] <= ts[:, None], axis=1)
    lower = jnp.clip(jnp.where(softmax, clustered - 1, size - clustered - 1), 0, size - 2)
    saturated = jnp.where(softmax, betas[-1], betas[0])
    low, high = betas[lower], betas[lower + 1]

    def bisect(_, bracket):
        low, high = bracket
        middle = (low + high) / 2
        done = _times(n, middle, jnp.full_like(middle, delta), softmax) <= ts
        # SA: clustered below the boundary (keep `low` clustered); USA: above.
        move_low = jnp.where(softmax, done, ~done)
        return jnp.where(move_low, middle, low), jnp.where(move_low, high, middle)

    low, high = jax.lax.fori_loop(0, _BISECTIONS, bisect, (low, high))
    boundary = jnp.where(softmax, low, high)
    boundary = jnp.where(clustered == size, saturated, boundary)
    return jnp.where(clustered == 0, jnp.nan, boundary)
