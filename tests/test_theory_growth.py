"""Linear growth rates of the uniform state (theory.growth_rate) against particle simulations.

Kept apart from test_theory.py because each simulation compiles its own solve.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import theory


def _lattice_growth(model, betas, ells, n=256, epsilon=1e-6):
    """Displace n equally spaced angles by ε sin(ℓφ)/ℓ (a density perturbation ∝ cos ℓθ),
    run the particle system in d = 2 and read the growth of |n⁻¹Σ e^{iℓθ_j}| over a time
    4/λ_ℓ. Returns (measured, predicted)."""
    field = tf.SelfAttention if model == "SA" else tf.UnnormalizedSelfAttention
    predicted = theory.growth_rate(ells, betas, 2, model)
    phi = 2 * jnp.pi * jnp.arange(n, dtype=float) / n + 0.1

    def measure(beta, ell, horizon):
        wave = ell.astype(phi.dtype)
        x0 = tf.angles_to_points(phi + epsilon * jnp.sin(wave * phi) / wave)
        solution = tf.solve(
            field(beta),
            x0,
            jnp.stack([0 * horizon, horizon]),
            observe=functools.partial(tf.order_parameter, k=ell),
            rtol=1e-12,
            atol=1e-12,
        )
        r = solution.observed
        return jnp.log(r[1] / r[0]) / horizon

    measured = jax.vmap(measure)(
        jnp.asarray(betas, float), jnp.asarray(ells), jnp.asarray(4 / predicted)
    )
    return np.asarray(measured), predicted


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_growth_rates_match_a_particle_simulation_on_the_circle(model):
    betas = np.array([1.0, 1.0, 4.0, 4.0, 4.0])
    ells = np.array([1, 3, 2, 3, 5])
    measured, predicted = _lattice_growth(model, betas, ells)
    np.testing.assert_allclose(measured, predicted, rtol=1e-6)


def _zonal_growth(model, beta, ell, rings=32, per_ring=32, epsilon=1e-6):
    """d = 3: tokens on `rings` latitude circles (uniform in z = <x, e_3>, which is uniform
    on S² by Archimedes), equally spaced in longitude. Moving z by ε(1 - z²)P_ℓ'(z) adds the
    zonal density perturbation ∝ P_ℓ(z). The ring configuration is only approximately
    uniform, so it drifts a little by itself; the growth is read from the difference of
    mean P_ℓ(z) between the perturbed and the unperturbed run over a time 3/λ_ℓ."""
    field = tf.SelfAttention if model == "SA" else tf.UnnormalizedSelfAttention
    predicted = theory.growth_rate(ell, beta, 3, model)
    z = -1 + (2 * np.arange(rings) + 1) / rings
    longitude = 2 * np.pi * np.arange(per_ring) / per_ring
    longitude = (longitude[None, :] + (np.arange(rings) % 2)[:, None] * np.pi / per_ring).ravel()
    z = np.repeat(z, per_ring)
    legendre = np.polynomial.legendre.Legendre.basis(ell)
    moved = z + epsilon * (1 - z**2) * legendre.deriv()(z)

    def points(height):
        radius = np.sqrt(1 - height**2)
        return np.stack([radius * np.cos(longitude), radius * np.sin(longitude), height], -1)

    coefficients = jnp.asarray(np.polynomial.legendre.leg2poly(legendre.coef)[::-1].copy())
    horizon = 3 / predicted

    def mean_legendre(x):
        return jnp.mean(jnp.polyval(coefficients, x[:, 2]))

    def run(x0):
        return tf.solve(
            field(beta),
            x0,
            jnp.array([0.0, horizon]),
            observe=mean_legendre,
            rtol=1e-12,
            atol=1e-12,
        ).observed

    perturbed, base = jax.vmap(run)(jnp.asarray(np.stack([points(moved), points(z)])))
    difference = np.asarray(perturbed - base)
    return np.log(difference[1] / difference[0]) / horizon, predicted


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_growth_rate_matches_a_particle_simulation_on_the_sphere(model):
    measured, predicted = _zonal_growth(model, 2.0, 2)
    assert measured == pytest.approx(predicted, rel=1e-2)
