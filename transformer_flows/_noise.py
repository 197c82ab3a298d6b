"""Noise for sphere fields: Brownian motion on the sphere and common (matrix) noise.

`solve(field, x0, ts, noise=IndependentNoise(kappa), key=key, dt0=...)` integrates the
Stratonovich SDE in R^{n×d}

    dX_i = P_{X_i}(drift_i) dt + Σ_k g_k(X)_i ∘ dW^k,

with a tangent diffusion (P_x v = v - <x, v> x), and returns every state to the sphere after
each step (`Renormalized`). A Stratonovich SDE with tangent vector fields keeps |X_i| = 1
exactly, so the projection only removes the solver's own O(h^{3/2}) radial error; the
Itô–Stratonovich correction of both noises below is radial, which is why projected Itô
schemes (`diffrax.Euler`) converge to the same process (docs/models.md, "Noisy dynamics").
"""

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._custom_types import Particles
from ._sphere import project_tangent
from ._validation import as_float_array, check_positive


def _positive_scalar(name: str, meaning: str):
    def convert(value) -> Float[Array, ""]:
        array = as_float_array(value, name)
        if array.ndim != 0:
            raise ValueError(
                f"`{name}` ({meaning}) must be a scalar, got shape {array.shape}. For a sweep, "
                "`jax.vmap` over a function that builds the noise from a scalar."
            )
        return check_positive(array, name)

    return convert


class AbstractNoise(eqx.Module):
    """A Stratonovich diffusion on (S^{d-1})^n driven by a Brownian motion W:
    dX = ... + `increment(X, dW)`, with `increment` linear in dW and tangent at X."""

    @abc.abstractmethod
    def brownian_shape(self, x: Particles) -> PyTree[jax.ShapeDtypeStruct]:
        """Shape and dtype of the Brownian motion W for states shaped like `x`."""

    @abc.abstractmethod
    def increment(self, x: Particles, dw: PyTree[Array]) -> Particles:
        """The diffusion at `x` applied to the Brownian increment `dw` (tangent at `x`)."""

    def __add__(self, other: "AbstractNoise") -> "NoiseSum":
        if not isinstance(other, AbstractNoise):
            return NotImplemented
        return NoiseSum((self, other))


class IndependentNoise(AbstractNoise):
    """Independent Brownian motions on the sphere, one per token:
    dX_i = ... + √(2/κ) P_{X_i} ∘ dW_i, W_i a Brownian motion in R^d.

    The generator of the noise is κ^{-1} Δ_S (Δ_S the Laplace–Beltrami operator), so
    without interaction E<x(t), x(0)> = exp(-(d - 1) t / κ) and the uniform measure is
    invariant; the Fokker–Planck equation is ∂_t μ + div(μ v[μ]) = κ^{-1} Δ_S μ.

    **Arguments:**
    - `kappa`: the inverse noise strength κ > 0 (a scalar; traced values allowed, and
      gradients with respect to it are pathwise).
    """

    kappa: Float[Array, ""] = eqx.field(
        converter=_positive_scalar("kappa", "the inverse noise strength κ")
    )

    def brownian_shape(self, x: Particles) -> PyTree[jax.ShapeDtypeStruct]:
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def increment(self, x: Particles, dw: PyTree[Array]) -> Particles:
        sigma = jnp.sqrt(2 / self.kappa).astype(x.dtype)
        return sigma * project_tangent(x, dw)


class CommonNoise(AbstractNoise):
    """One matrix Brownian motion shared by every token (Engel–Shalova, arXiv:2603.06187):
    dX_i = ... + σ P_{X_i} ∘ dQ_t X_i, Q_t = (B_t + B_tᵀ)/√2, B a d×d Brownian motion
    (Q is a GOE-valued Brownian motion: off-diagonal variance t, diagonal 2t).

    Each token alone is a Brownian motion on the sphere with generator (σ²/2) Δ_S (the same
    law as `IndependentNoise(kappa=2/σ²)`), but tokens are driven by the same rotations:
    u = <x_i, x_j> solves du = -2σ² u (1 - u²) dt + 2σ (1 - u²) dβ in every dimension, so
    pairs end aligned (u → 1) with probability 1 - θ_0/π and antipodal otherwise
    (θ_0 = arccos u(0); derived in docs/models.md and checked by Monte Carlo).

    **Arguments:**
    - `sigma`: the strength σ > 0 (a scalar; traced values allowed).
    """

    sigma: Float[Array, ""] = eqx.field(
        default=1.0, converter=_positive_scalar("sigma", "the common-noise strength σ")
    )

    def brownian_shape(self, x: Particles) -> PyTree[jax.ShapeDtypeStruct]:
        d = x.shape[-1]
        return jax.ShapeDtypeStruct((d, d), x.dtype)

    def increment(self, x: Particles, dw: PyTree[Array]) -> Particles:
        scale = (self.sigma / jnp.sqrt(2.0)).astype(x.dtype)
        dq = scale * (dw + dw.T)
        return project_tangent(x, x @ dq)  # dQ symmetric: row i is (dQ x_i)ᵀ


class NoiseSum(AbstractNoise):
    """Several noises at once, each driven by its own independent Brownian motion:
    dX = ... + Σ_k noise_k.increment(X, dW^k). Built by `+`, e.g.
    `IndependentNoise(kappa) + CommonNoise(sigma)` (thermal noise on every token beside one
    random rotation for all). The generators add, so without interaction each token is a
    Brownian motion on the sphere with E<x(t), x(0)> = exp(-(d-1)(1/κ + σ²/2) t).

    **Arguments:**
    - `noises`: a tuple of noises (a nested sum is flattened).
    """

    noises: tuple[AbstractNoise, ...]

    def __init__(self, noises):
        flat = []
        for noise in noises:
            if not isinstance(noise, AbstractNoise):
                raise ValueError(
                    f"`noises` must hold transformer_flows noises such as IndependentNoise(4.0) "
                    f"or CommonNoise(1.0), got {noise!r}."
                )
            flat.extend(noise.noises if isinstance(noise, NoiseSum) else (noise,))
        if not flat:
            raise ValueError("`noises` is empty: give at least one noise, or pass noise=None.")
        self.noises = tuple(flat)

    def brownian_shape(self, x: Particles) -> PyTree[jax.ShapeDtypeStruct]:
        return tuple(noise.brownian_shape(x) for noise in self.noises)

    def increment(self, x: Particles, dw: PyTree[Array]) -> Particles:
        parts = [noise.increment(x, w) for noise, w in zip(self.noises, dw, strict=True)]
        return sum(parts[1:], parts[0])


class NoiseTerm(diffrax.AbstractTerm):
    """The diffrax term of a noise: `vf(t, y, args)` is the state itself (the diffusion of
    these noises depends on the state only) and `prod(vf, dW)` applies the diffusion there,
    so `vf_prod(t, y, args, dW) = noise.increment(y, dW)` for every solver."""

    noise: AbstractNoise
    path: diffrax.AbstractBrownianPath

    def vf(self, t, y, args):
        return y

    def contr(self, t0, t1, **kwargs):
        return self.path.evaluate(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.noise.increment(vf, control)

    def is_vf_expensive(self, t0, t1, y, args) -> bool:
        # `vf` is not linear in the diffusion: never let a solver combine vf values before
        # the product (it then contracts each evaluation with the control at once).
        return True
