"""`solve` integrates sphere ODEs through the field's radial extension f(x/|x|) (issue 12,
item 4): the same field on the sphere, no stiff normal mode off it."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import transformer_flows as tf
from transformer_flows._solve import _RadialExtension
from transformer_flows._solver._renormalized import Renormalized

# One token: softmax over one key is 1, so SA is ẋ = Vx - <x, Vx>x, whose flow is
# x(t) = e^{tV} x0 / |e^{tV} x0|. A PSD V with λ_max = 40 is the stiff Fig. 5 Wishart case.
D = 4
EIGENVALUES = jnp.array([40.0, 25.0, 10.0, 0.0])


def _system(key):
    basis, _ = jnp.linalg.qr(jax.random.normal(key, (D, D)))
    V = basis @ jnp.diag(EIGENVALUES) @ basis.T
    x0 = tf.normalize(jax.random.normal(jax.random.fold_in(key, 1), (1, D)))
    return tf.SelfAttention(1.0, V=V), V, x0


def test_same_field_on_the_sphere_and_constant_along_rays(getkey):
    field, _, x0 = _system(getkey())
    t = jnp.asarray(0.0)
    extension = _RadialExtension(field)
    np.testing.assert_allclose(extension(t, x0), field(t, x0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(extension(t, 1.7 * x0), field(t, x0), rtol=1e-13, atol=1e-13)
    # Layer solvers see the field's own drift and layer map.
    np.testing.assert_array_equal(extension.drift(t, x0), field.drift(t, x0))
    np.testing.assert_array_equal(
        extension.residual_layer(t, x0, 0.1), field.residual_layer(t, x0, 0.1)
    )


def test_normal_eigenvalue_removed(getkey):
    """Along x the field's own extension P_x(Vx) has eigenvalue -2<x, Vx> (the reason for
    the extension); the radial extension has 0 there."""
    field, V, x0 = _system(getkey())
    t = jnp.asarray(0.0)
    along = lambda f: jax.jvp(lambda y: f(t, y), (x0,), (x0,))[1]  # noqa: E731
    expected = -2.0 * (x0 @ V @ x0.T)[0, 0]
    np.testing.assert_allclose(jnp.sum(x0 * along(field)), expected, rtol=1e-12)
    np.testing.assert_allclose(along(_RadialExtension(field)), 0.0, atol=1e-12)


def test_exact_flow_and_fewer_steps_than_the_own_extension(getkey):
    field, V, x0 = _system(getkey())
    ts = jnp.linspace(0.0, 3.0, 4)
    rtol = 1e-5
    trajectory = tf.solve(field, x0, ts, rtol=rtol, atol=rtol)
    w, U = jnp.linalg.eigh(V)
    exact = jnp.stack([U @ (jnp.exp(t * w) * (U.T @ x0[0])) for t in ts])
    exact = exact / jnp.linalg.norm(exact, axis=-1, keepdims=True)
    np.testing.assert_allclose(trajectory.xs[:, 0], exact, atol=20 * rtol)
    # The same solver on the field's own extension (the ODE term before this change).
    own = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        Renormalized(diffrax.Tsit5()),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=x0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol, pcoeff=0.3, icoeff=0.4),
        max_steps=4096,
    )
    steps = int(trajectory.stats["num_steps"])
    own_steps = int(own.stats["num_steps"])
    # Stability-limited: h·λ ≲ 3.5 for Tsit5, with λ = λ_max = 40 (tangent) against
    # 2λ_max = 80 (normal mode): about half the steps.
    assert steps < 0.75 * own_steps, (steps, own_steps)
