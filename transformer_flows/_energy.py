"""Interaction energies whose gradient (ascent) flows are the attention dynamics (§3)."""

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._attention import as_masses
from ._custom_types import Angles, Particles
from ._field._self_attention import BETA_FIX
from ._validation import as_float_array, check_finite


def _interaction(
    scores: Float[Array, "n n"],
    beta: Float[ArrayLike, ""],
    *,
    shifted: bool,
    rescaled: bool,
    weights: Float[Array, "n n"] | None = None,
) -> Float[Array, ""]:
    """(1/(2β)) Σ_ij e^{β s_ij}, with its β → 0 limit (1/2) Σ_ij s_ij when β = 0; with
    `weights`, each pair's term times w_ij (e.g. 0 for the pairs of a padded token).

    Any finite real β: for β < 0 (repulsive softmax) the prefactor 1/(2β) is negative and
    the flows are still ascents of this energy. `shifted` subtracts the constant 1/(2β) per
    pair (App. C), which makes the energy continuous at β = 0. `rescaled` multiplies by
    e^{-|β|} (computed as e^{β s - |β|}, finite in float32 for large |β| when |s| <= 1); it
    is the energy of the time-rescaled USA field.
    """
    # Checked before the cast to the scores' dtype, so the error shows β as given; under jit
    # the check lives in the returned β, which every branch below uses.
    beta = check_finite(as_float_array(beta, "beta"), "beta", BETA_FIX)
    beta = jnp.asarray(beta, dtype=scores.dtype)
    nonzero = beta != 0
    safe_beta = jnp.where(nonzero, beta, 1)
    if rescaled:
        terms = jnp.exp(safe_beta * scores - jnp.abs(safe_beta))
        if shifted:
            terms = terms - jnp.exp(-jnp.abs(safe_beta))
    else:
        terms = jnp.expm1(safe_beta * scores) if shifted else jnp.exp(safe_beta * scores)
    if weights is not None:
        terms, scores = terms * weights, scores * weights
    value = jnp.sum(terms) / (2 * safe_beta)
    return jnp.where(nonzero, value, jnp.sum(scores) / 2)


def _pair_weights(masses, n: int, dtype) -> tuple[Float[Array, "n n"] | None, Array | int]:
    """(m_i m_j, M = Σ m) for token masses, or (None, n) without them."""
    masses = as_masses(masses)
    if masses is None:
        return None, n
    if masses.shape[0] != n:
        raise ValueError(
            f"`masses` has {masses.shape[0]} entries but there are {n} tokens; give one "
            "positive mass per token."
        )
    masses = masses.astype(dtype)
    return masses[:, None] * masses[None, :], jnp.sum(masses)


def energy(
    x: Particles,
    beta: Float[ArrayLike, ""],
    *,
    shifted: bool = False,
    rescaled: bool = False,
    masses: Float[ArrayLike, " n"] | Sequence[float] | None = None,
) -> Float[Array, ""]:
    """E_β(X) = (1/(2βn²)) Σ_ij e^{β<x_i,x_j>}, non-decreasing along SA and USA.

    With token `masses` m (n,) (positive; None: all 1): (1/(2βM²)) Σ_ij m_i m_j e^{β<x_i,x_j>},
    M = Σ_j m_j, the energy of the configuration in which token j stands for m_j coincident
    tokens (the weighted particles of `solve_reduced`; equal to the unreduced energy).

    At β = 0 returns the limit of the shifted energy, (1/(2n²)) Σ_ij <x_i,x_j>: the additive
    constant 1/(2β) diverges but does not change the dynamics (ẋ = n ∇E still holds).
    `beta` must be finite, of either sign (ValueError now, `eqx.error_if` under jit/vmap;
    the same for `modified_metric_energy` and `torus_energy`). For large |β| in float32 use
    `rescaled=True` (e^{-|β|} E_β, finite at β = 1000 where e^β overflows).
    """
    weights, total = _pair_weights(masses, x.shape[0], x.dtype)
    return (
        _interaction(x @ x.T, beta, shifted=shifted, rescaled=rescaled, weights=weights) / total**2
    )


def modified_metric_energy(
    x: Particles, beta: Float[ArrayLike, ""], V: Float[ArrayLike, "d d"] | None = None
) -> Float[Array, ""]:
    """(1/(2β)) Σ_ij e^{β<V x_i, x_j>} (§3.4.1, no 1/n²). For symmetric V = QᵀK, SA with
    weights (Q, K, V) is its gradient flow in the metric Σ_i Z_i <a_i, b_i>."""
    vx = x if V is None else x @ V.T
    return _interaction(vx @ x.T, beta, shifted=False, rescaled=False)


def torus_energy(
    theta: Angles,
    beta: Float[ArrayLike, ""],
    *,
    rescaled: bool = False,
    masses: Float[ArrayLike, " n"] | Sequence[float] | None = None,
) -> Float[Array, ""]:
    """E_β(θ) = (1/(2βn²)) Σ_ij e^{β cos(θ_i - θ_j)} (7.4); (7.1) is θ̇ = n ∇E_β(θ).
    `rescaled` and `masses` as in `energy`."""
    weights, total = _pair_weights(masses, theta.shape[0], theta.dtype)
    scores = jnp.cos(theta[:, None] - theta[None, :])
    return _interaction(scores, beta, shifted=False, rescaled=rescaled, weights=weights) / total**2
