"""Exact reductions: the equiangular ODE (Thm 6.8) and the Kuramoto angle form (§7)."""

import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

from helpers import equiangular_reference, off_diagonal

TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("n, d, beta, t1", [(4, 5, 1.0, 6.0), (8, 8, 4.0, 10.0)])
def test_orthonormal_start_follows_equiangular_ode(model, n, d, beta, t1):
    field = tf.SelfAttention(beta) if model == "SA" else tf.UnnormalizedSelfAttention(beta)
    ts = np.linspace(0, t1, 41)
    traj = tf.solve(field, tf.orthonormal_tokens(n, d), ts, **TIGHT)
    gram = np.einsum("tid,tjd->tij", traj.xs, traj.xs)
    reference = equiangular_reference(ts, n, beta, model)
    error = np.abs(off_diagonal(gram) - reference[:, None]).max()
    assert error <= 1e-8, error
    # the exact problem is non-trivial: the cosine moves well away from 0
    assert reference[-1] > 0.3


def test_beta_zero_closed_form():
    n, ts = 6, np.linspace(0, 4, 21)
    traj = tf.solve(tf.SelfAttention(0.0), tf.orthonormal_tokens(n, n), ts, **TIGHT)
    gram = np.einsum("tid,tjd->tij", traj.xs, traj.xs)
    exact = (np.exp(2 * ts) - 1) / (np.exp(2 * ts) + n - 1)
    assert np.abs(off_diagonal(gram) - exact[:, None]).max() <= 1e-9


@pytest.mark.parametrize("normalized", [True, False])
def test_circle_fields_equal_kuramoto_along_solutions(getkey, normalized):
    beta, ts = 3.0, np.linspace(0, 5, 26)
    theta0 = tf.uniform_angles(getkey(), 7)
    sphere_field = tf.SelfAttention(beta) if normalized else tf.UnnormalizedSelfAttention(beta)
    on_sphere = tf.solve(sphere_field, tf.angles_to_points(theta0), ts, **TIGHT)
    on_torus = tf.solve(tf.Kuramoto(beta, normalized=normalized), theta0, ts, **TIGHT)
    assert np.abs(on_sphere.xs - tf.angles_to_points(on_torus.xs)).max() <= 1e-9


def test_kuramoto_matches_printed_angle_equations(getkey):
    theta = np.asarray(tf.uniform_angles(getkey(), 9))
    omega = np.linspace(-0.5, 0.5, 9)
    beta, coupling = 2.5, 1.7
    diff = theta[:, None] - theta[None, :]
    kernel = np.exp(beta * np.cos(diff)) * np.sin(diff)
    usa = -kernel.sum(1) / 9  # (7.1)
    sa = -kernel.sum(1) / np.exp(beta * np.cos(diff)).sum(1)
    field = tf.Kuramoto(beta, coupling=coupling, frequencies=omega)
    np.testing.assert_allclose(field(0.0, jnp.asarray(theta)), omega + coupling * usa, atol=1e-12)
    field = tf.Kuramoto(beta, normalized=True)
    np.testing.assert_allclose(field(0.0, jnp.asarray(theta)), sa, atol=1e-12)
    # β = 0: classical Kuramoto (7.2)
    classical = omega + coupling * np.sin(-diff).mean(1)
    field = tf.Kuramoto(0.0, coupling=coupling, frequencies=omega)
    np.testing.assert_allclose(field(0.0, jnp.asarray(theta)), classical, atol=1e-12)


def test_kuramoto_is_gradient_of_torus_energy(getkey):
    import jax

    theta = tf.uniform_angles(getkey(), 11)
    for beta in (0.5, 3.0):
        gradient = jax.grad(tf.torus_energy)(theta, beta)
        np.testing.assert_allclose(
            tf.Kuramoto(beta)(0.0, theta), 11 * gradient, rtol=1e-12, atol=1e-12
        )
    # β = 0 limit: the gradient flow of the Kuramoto energy F with K = 1
    gradient = jax.grad(tf.torus_energy)(theta, 0.0)
    np.testing.assert_allclose(tf.Kuramoto(0.0)(0.0, theta), 11 * gradient, atol=1e-12)


def test_circle_energy_equals_sphere_energy(getkey):
    theta = tf.uniform_angles(getkey(), 6)
    np.testing.assert_allclose(
        tf.torus_energy(theta, 2.0), tf.energy(tf.angles_to_points(theta), 2.0), rtol=1e-13
    )
    assert jnp.isfinite(tf.torus_energy(theta, 0.0))
