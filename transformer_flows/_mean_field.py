"""The mean-field (n → ∞) equation on the circle, pseudo-spectral in Fourier modes.

  ρ_t + ∂_θ(ρ v[ρ]) = κ^{-1} ρ_θθ,   v[ρ] = β^{-1} ∂_θ(h * ρ)   (USA),
                                      v[ρ] = β^{-1} ∂_θ(h * ρ) / (h * ρ)   (SA),
with h(φ) = e^{β cos φ} = Σ_k I_k(β) e^{ikφ} and (h * ρ)(θ) = ∫ h(θ - θ') ρ(θ') dθ', so
v(θ) = ∫ e^{β cos(θ'-θ)} sin(θ'-θ) ρ(θ') dθ' (divided by ∫ e^{β cos(θ'-θ)} ρ(θ') dθ' for SA):
the n → ∞ limit of the angle dynamics (7.1) for a probability density ρ w.r.t. dθ, and of the
noisy dynamics dθ_i = v_i dt + sqrt(2/κ) dW_i. The convolution is diagonal in Fourier modes;
the product ρ v (and the SA quotient) is evaluated on a grid padded by the 3/2 rule.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._results import RESULTS, finite_result
from ._validation import as_float_array, check_condition, is_concrete

_MODELS = ("SA", "USA")
_IMEX = (diffrax.KenCarp3, diffrax.KenCarp4, diffrax.KenCarp5, diffrax.Sil3)

_FAILED = (
    "solve_mean_field did not reach the last save time (max_steps reached, or the step size "
    "underflowed). With noise, an explicit solver's step is limited by the diffusion's "
    "stiffness κ^{-1}M² (its step is about 3κ/M²: 569 and 0.005 at κ = 1.8, M = 32), so a "
    "long horizon needs ~t·M²/(3κ) steps. Fix: solver=diffrax.KenCarp4() (IMEX: the diffusion "
    "implicit, exact in Fourier modes), or raise max_steps. With throw=False the saves not "
    "reached are NaN and `.result` says why."
)


def _kernel_coefficients(beta: Array, modes: int) -> Array:
    """e^{-β} I_k(β), k = 0..modes, as the exact DFT of e^{β(cos φ - 1)} on a grid of L >> modes
    points (aliasing adds I_{L±k}: negligible for β <= modes). Differentiable in β."""
    size = 8 * (modes + 1)
    phi = 2 * jnp.pi * jnp.arange(size, dtype=beta.dtype) / size
    values = jnp.exp(beta * (jnp.cos(phi) - 1))
    return jnp.fft.rfft(values).real[: modes + 1] / size


def _checked_scalar(value, name: str, kind: str, valid, requirement: str):
    """`value` as a float scalar satisfying `valid` (a ValueError now when concrete, an
    `eqx.error_if` under jit): "`name` must be `kind`" / "`name` must `requirement`"."""
    array = as_float_array(value, name)
    if array.ndim != 0:
        raise ValueError(f"`{name}` must be {kind}, got shape {array.shape}.")
    shown = f"{float(array)}" if is_concrete(array) else "a traced value"
    return check_condition(array, ~valid(array), f"`{name}` must {requirement}, got {shown}.")


class MeanFieldCircle(eqx.Module):
    """The mean-field equation on the circle (module docstring) with `modes` Fourier modes.

    - `beta`: inverse temperature β >= 0 (a JAX scalar: vmap and grad through it).
    - `model`: "SA" (softmax, the paper's (6.9)) or "USA" (unnormalised, (6.10)).
    - `kappa`: inverse noise κ > 0 (diffusion κ^{-1} ∂²_θ); None or inf: the noiseless equation.
    - `modes`: the largest Fourier mode M kept; `theta` is the grid of 2M points on which
      densities are given and returned. Noiseless solutions concentrate into Dirac masses that
      no finite M resolves: trust them while the density is resolved (`resolution` of a
      `MeanFieldSolution`).

    The state is the coefficients c_k of ρ(θ) = Σ_{|k|<=M} c_k e^{ikθ}, stored as real and
    imaginary parts, shape (2, M+1). Mass 2π c_0 is conserved exactly.
    """

    beta: Float[Array, ""]
    diffusion: Float[Array, ""]
    model: str = eqx.field(static=True)
    modes: int = eqx.field(static=True)

    def __init__(
        self,
        beta: ArrayLike,
        *,
        model: str = "SA",
        kappa: ArrayLike | None = None,
        modes: int = 64,
    ):
        if model not in _MODELS:
            raise ValueError(
                f"`model` must be 'SA' (softmax) or 'USA' (unnormalised), got {model!r}."
            )
        if isinstance(modes, bool) or not isinstance(modes, (int, np.integer)) or modes < 4:
            raise ValueError(f"`modes` must be an integer >= 4, got {modes!r}.")
        beta = _checked_scalar(
            beta,
            "beta",
            "a scalar",
            lambda b: (b >= 0) & (b <= modes),
            f"lie in [0, modes] = [0, {modes}] (the kernel e^(β cos) needs about sqrt(2β) "
            "modes per cluster and more to resolve it; raise `modes`)",
        )
        if kappa is None:
            diffusion = jnp.zeros((), beta.dtype)
        else:
            kappa = _checked_scalar(
                kappa,
                "kappa",
                "a scalar or None",
                lambda k: k > 0,
                "be > 0 (inverse noise; None or inf for no noise)",
            )
            diffusion = (1 / kappa).astype(beta.dtype)
        self.beta = beta
        self.diffusion = diffusion
        self.model = model
        self.modes = int(modes)

    @property
    def theta(self) -> Float[Array, " grid"]:
        """The grid θ_j = 2πj/(2M), j < 2M, of `to_coefficients` and returned densities."""
        size = 2 * self.modes
        return 2 * jnp.pi * jnp.arange(size, dtype=self.beta.dtype) / size

    def to_coefficients(self, density: Float[Array, " grid"]) -> Float[Array, "2 modes"]:
        """Fourier coefficients (real, imaginary) of a density sampled on `theta`; modes above
        M (and the Nyquist mode) are dropped."""
        size = 2 * self.modes
        c = jnp.fft.rfft(density)[: self.modes + 1] / size
        c = c.at[self.modes].set(jnp.zeros((), c.dtype))
        return jnp.stack([c.real, c.imag])

    def to_density(self, state: Float[Array, "2 modes"], size: int | None = None) -> Array:
        """ρ on the grid of `size` points (default 2M, i.e. `theta`)."""
        size = 2 * self.modes if size is None else size
        c = jax.lax.complex(state[0], state[1])
        padded = jnp.zeros(size // 2 + 1, c.dtype).at[: self.modes + 1].set(c)
        return jnp.fft.irfft(padded * size, n=size)

    def _velocity_and_density(self, state, size):
        c = jax.lax.complex(state[0], state[1])
        cdtype = c.dtype
        k = jnp.arange(self.modes + 1, dtype=self.beta.dtype)
        scaled = _kernel_coefficients(self.beta, self.modes)  # e^{-β} I_k(β)
        conv = (2 * jnp.pi * scaled).astype(cdtype) * c  # e^{-β} (h * ρ)^_k
        # e^{-β} β^{-1} ∂(h * ρ); at β = 0 its limit (e^{-β} I_k/β → 1/2 for k = 1, else 0).
        safe = jnp.where(self.beta > 0, self.beta, 1)
        ik = jax.lax.complex(jnp.zeros_like(k), k)
        limit = (2 * jnp.pi * jnp.where(k == 1, 0.5, 0.0)).astype(cdtype) * ik * c
        numerator = jnp.where(self.beta > 0, ik * conv / safe.astype(cdtype), limit)
        rho = self._grid(c, size)
        if self.model == "USA":
            return jnp.exp(self.beta) * self._grid(numerator, size), rho
        return self._grid(numerator, size) / self._grid(conv, size), rho

    def _grid(self, c, size):
        padded = jnp.zeros(size // 2 + 1, c.dtype).at[: self.modes + 1].set(c)
        return jnp.fft.irfft(padded * size, n=size)

    def drift(self, t, state: Float[Array, "2 modes"], args) -> Float[Array, "2 modes"]:
        """-∂_θ(ρ v[ρ]) in Fourier coefficients (the transport part)."""
        size = 2 * ((3 * self.modes + 4) // 2)  # >= 3M + 3: the product ρ v is alias-free
        velocity, rho = self._velocity_and_density(state, size)
        flux = jnp.fft.rfft(rho * velocity)[: self.modes + 1] / size
        k = jnp.arange(self.modes + 1, dtype=self.beta.dtype)
        rate = -jax.lax.complex(jnp.zeros_like(k), k) * flux
        rate = rate.at[self.modes].set(0)
        return jnp.stack([rate.real, rate.imag]).astype(state.dtype)

    def diffuse(self, t, state: Float[Array, "2 modes"], args) -> Float[Array, "2 modes"]:
        """κ^{-1} ∂²_θ ρ in Fourier coefficients (the stiff, linear part)."""
        k = jnp.arange(self.modes + 1, dtype=state.dtype)
        return -(self.diffusion * k**2)[None, :] * state

    def __call__(self, t, state, args):
        return self.drift(t, state, args) + self.diffuse(t, state, args)


class MeanFieldSolution(eqx.Module):
    """The output of `solve_mean_field`.

    - `ts`: save times (T,); `theta`: the grid (2M,); `density`: ρ at `ts` on `theta`, (T, 2M).
    - `coefficients`: the state (T, 2, M+1) (real and imaginary parts of c_k).
    - `order_parameter`: |∫ e^{iθ} ρ dθ| = 2π |c_1| at `ts`.
    - `resolution`: the fraction of the L² norm in the top quarter of the modes at `ts`; above
      ~1e-6 the density is under-resolved (raise `modes`, or add noise).
    - `stats`, `result`: from diffrax.
    """

    ts: Float[Array, " times"]
    theta: Float[Array, " grid"]
    density: Float[Array, "times grid"]
    coefficients: Float[Array, "times 2 modes"]
    order_parameter: Float[Array, " times"]
    resolution: Float[Array, " times"]
    stats: dict
    result: RESULTS

    @property
    def succeeded(self):
        """Whether the solve reached the last save time with finite states."""
        return self.result == RESULTS.successful


def solve_mean_field(
    equation: MeanFieldCircle,
    density0: ArrayLike,
    ts: ArrayLike,
    *,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    dt0: float | None = None,
    max_steps: int = 100_000,
    throw: bool = True,
) -> MeanFieldSolution:
    """Integrate the mean-field equation from `density0` (a probability density w.r.t. dθ,
    sampled on `equation.theta`) and return it at the save times `ts` (starting from t = 0).

    The sibling of `solve` for n = ∞. The default solver is `diffrax.Tsit5()` with a PID
    controller: explicit, for the nonlinear transport term ((USA at large β) fast). The
    diffusion κ^{-1}∂²_θ is stiff when κ^{-1}M² is large (M = 32, κ = 1.8: 569), which limits
    an explicit step to about 3κ/M²: pass an IMEX solver, `diffrax.KenCarp4()` (or KenCarp3,
    KenCarp5, Sil3), and the diffusion (`MeanFieldCircle.diffuse`, diagonal in Fourier modes)
    is the implicit term and the transport (`drift`) the explicit one. Their default chord
    root finder is replaced by `optimistix.Newton` at (rtol, atol): the chord's convergence
    test rejects steps on this linear implicit term (a measured 59% of 100 000 steps at
    κ = 1.8, M = 32, t = 600, against 0 with Newton); a root finder you set is kept. jit,
    vmap and grad go through (over the density, β and κ).

    `density0` must be a probability density: finite, >= 0 and of mass ∫ρ dθ = 1 (the
    trapezoid sum 2π·mean(density0), to 1e-4); anything else is refused (a ValueError now, an
    equinox runtime error under jit). `throw`: raise if the solve fails (`max_steps` reached,
    or a saved state is NaN or inf); with throw=False read `.result` / `.succeeded`: the
    saves the solve did not reach, or that are not finite, are NaN (never inf or a number).
    """
    density0 = as_float_array(density0, "density0")
    size = 2 * equation.modes
    if density0.shape != (size,):
        raise ValueError(
            f"`density0` must be sampled on `equation.theta` (shape ({size},) for "
            f"modes={equation.modes}), got shape {density0.shape}."
        )
    density0 = _checked_density(density0)
    ts = as_float_array(ts, "ts")
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"`ts` must be a 1-d array of times, got shape {ts.shape}.")
    shown = f" got {np.asarray(ts)!r}" if is_concrete(ts) else ""
    ts = check_condition(
        ts,
        ~(jnp.all(jnp.isfinite(ts)) & jnp.all(ts >= 0) & jnp.all(jnp.diff(ts) >= 0)),
        f"`ts` must be finite, >= 0 and non-decreasing (the solve starts at t = 0);{shown}.",
    )
    dtype = jnp.result_type(density0.dtype, equation.beta.dtype)
    equation = eqx.tree_at(
        lambda e: (e.beta, e.diffusion),
        equation,
        (equation.beta.astype(dtype), equation.diffusion.astype(dtype)),
    )
    ts = ts.astype(dtype)
    state0 = equation.to_coefficients(density0.astype(dtype))
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` must be a diffrax solver, e.g. diffrax.Tsit5() (explicit) or "
            f"diffrax.KenCarp4() (IMEX, for stiff diffusion), got {solver!r:.80}."
        )
    if isinstance(solver, _IMEX):
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(equation.drift), diffrax.ODETerm(equation.diffuse)
        )
        if isinstance(solver.root_finder, diffrax.VeryChord):
            solver = eqx.tree_at(lambda s: s.root_finder, solver, optx.Newton(rtol=rtol, atol=atol))
    else:
        terms = diffrax.ODETerm(equation)
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=jnp.zeros((), dtype),
        t1=ts[-1],
        dt0=dt0,
        y0=state0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    states = solution.ys
    if throw:
        states = eqx.error_if(states, solution.result != diffrax.RESULTS.successful, _FAILED)
    result, states = finite_result(solution.result, states, throw)
    # Saves not reached hold diffrax's inf fill: NaN, so that nothing read from them (the
    # order parameter, the density) is a number.
    reached = jnp.all(jnp.isfinite(states), axis=(1, 2))
    states = jnp.where(reached[:, None, None], states, jnp.nan)
    density = jax.vmap(equation.to_density)(states)
    power = states[:, 0] ** 2 + states[:, 1] ** 2
    top = power[:, 3 * equation.modes // 4 :].sum(axis=1) / power.sum(axis=1)
    order = 2 * jnp.pi * jnp.sqrt(power[:, 1])
    return MeanFieldSolution(
        ts=ts,
        theta=equation.theta,
        density=density,
        coefficients=states,
        order_parameter=order,
        resolution=top,
        stats=solution.stats,
        result=result,
    )


def _checked_density(density0: Array) -> Array:
    """`density0` if it is a probability density on the grid (finite, >= 0, mass 1)."""
    mass = 2 * jnp.pi * jnp.mean(density0)
    shown = ""
    if is_concrete(density0):
        values = np.asarray(density0)
        shown = (
            f" Got min {values.min():.6g}, mass {2 * np.pi * values.mean():.6g}"
            f"{' and non-finite values' if not np.all(np.isfinite(values)) else ''}."
        )
    return check_condition(
        density0,
        ~(jnp.all(jnp.isfinite(density0)) & jnp.all(density0 >= 0) & (jnp.abs(mass - 1) <= 1e-4)),
        "`density0` must be a probability density w.r.t. dθ on `equation.theta`: finite, >= 0 "
        "and of mass 2π·mean(density0) = 1 (to 1e-4). Fix: clip negative values and divide by "
        f"2π·mean(density0), e.g. the uniform density is jnp.full(2 * modes, 1 / (2π)).{shown}",
    )
