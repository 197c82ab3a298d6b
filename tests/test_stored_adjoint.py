"""StoredAdjoint and AnalyticVJPAttention: cheaper gradients that are still the exact
derivative of the computed solve (float64; the default adjoint and central differences as
references)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

N, D, HORIZON = 5, 3, 1.0
AUTO = tf.AutoAttention()


def _model(attention=AUTO):
    keys = jax.random.split(jax.random.key(3), 3)
    Q, K, V = (jax.random.normal(k, (D, D), jnp.float64) / np.sqrt(D) for k in keys)
    return tf.SelfAttention(jnp.asarray(1.5), Q, K, V, attention=attention)


def _starts():
    return tf.normalize(jax.random.normal(jax.random.key(4), (2, N, D), jnp.float64))


def _loss_fn(adjoint, max_steps, solver=None):
    """Mean over two vmapped starts (a batch: `cond` becomes `select` in StoredAdjoint's
    loop) of <x(T), c>, a smooth function of the final state."""
    target = jnp.linspace(-1.0, 1.0, N * D).reshape(N, D)

    def loss(model, x0, dt0=None):
        field = tf.as_field(model)
        ts = jnp.asarray([0.0, HORIZON])

        def one(x):
            trajectory = tf.solve(
                field,
                x,
                ts,
                solver=solver,
                dt0=dt0,
                rtol=1e-7,
                atol=1e-7,
                max_steps=max_steps,
                adjoint=adjoint,
            )
            return jnp.sum(trajectory.xs[-1] * target)

        return jnp.mean(jax.vmap(one)(x0))

    return loss


def _flat(grads) -> np.ndarray:
    model_grads, x_grads = grads
    leaves = [model_grads.beta, model_grads.Q, model_grads.K, model_grads.V, x_grads]
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])


def _grad_pair(loss, model):
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(model, _starts())


@pytest.fixture(scope="module")
def default_gradient():
    """The reference: diffrax's RecursiveCheckpointAdjoint through the same adaptive solve."""
    return _flat(_grad_pair(_loss_fn(diffrax.RecursiveCheckpointAdjoint(), 64), _model()))


def test_equals_default_adjoint(default_gradient):
    """The same adaptive solve (Tsit5, PID steps) differentiated without recomputation: the
    default's gradient to rounding. (AnalyticVJPAttention is checked against autodiff below
    and, with StoredAdjoint, against central differences.)"""
    gradient = _flat(_grad_pair(_loss_fn(tf.StoredAdjoint(), 64), _model()))
    error = np.linalg.norm(gradient - default_gradient) / np.linalg.norm(default_gradient)
    assert error < 1e-10


@pytest.fixture(scope="module")
def fixed_step_loss():
    """Fixed steps (RK4): the computed solve is a smooth function of the parameters. One
    compiled program (value and gradient) for every step size (dt0 is traced)."""
    return jax.jit(jax.value_and_grad(_loss_fn(tf.StoredAdjoint(), 10, solver=tf.RK4())))


def test_matches_central_differences(fixed_step_loss):
    """10 steps of 0.1: the gradient is what central differences of the solve converge to."""
    model, x0, dt0 = _model(tf.AnalyticVJPAttention()), _starts(), jnp.asarray(0.1)
    _, grads = fixed_step_loss(model, x0, dt0)
    direction = jax.random.normal(jax.random.key(5), (3, D, D), jnp.float64)

    weights = (model.Q, model.K, model.V)

    def moved(h):
        return eqx.tree_at(
            lambda m: (m.beta, m.Q, m.K, m.V),
            model,
            (model.beta + h, *(w + h * u for w, u in zip(weights, direction, strict=True))),
        )

    h = 1e-5
    up, down = (fixed_step_loss(moved(s), x0, dt0)[0] for s in (h, -h))
    central = (up - down) / (2 * h)
    exact = grads.beta + sum(
        jnp.sum(g * u) for g, u in zip((grads.Q, grads.K, grads.V), direction, strict=True)
    )
    np.testing.assert_allclose(float(exact), float(central), rtol=1e-8)


def test_too_few_stored_steps_fail_loudly(fixed_step_loss):
    """A solve that needs more steps than `max_steps` (20 steps of 0.05 > 10) raises: the
    stored loop is never silently truncated."""
    with pytest.raises(Exception, match="max_steps"):
        model = _model(tf.AnalyticVJPAttention())
        jax.block_until_ready(fixed_step_loss(model, _starts(), jnp.asarray(0.05)))


@pytest.mark.parametrize("normalized", [True, False])
def test_attention_vjp_equals_autodiff(normalized):
    """Two heads, queries against all keys, a traced log-shift (USA's time rescaling): the
    analytic rule's values and cotangents equal autodiff of the dense path."""
    keys = jax.random.split(jax.random.key(6), 5)
    x = tf.normalize(jax.random.normal(keys[0], (7, 4), jnp.float64))
    Q, K, V = (jax.random.normal(k, (2, 4, 4), jnp.float64) for k in keys[1:4])
    cotangent = jax.random.normal(keys[4], (7, 4), jnp.float64)

    def run(method, beta, Q, K, V, x):
        return tf.attend(
            x, beta, Q, K, V, normalized=normalized, log_shift=jnp.abs(beta), method=method
        )

    @jax.jit
    def both(*args):
        results = []
        for method in (tf.DenseAttention(), tf.AnalyticVJPAttention()):
            out, vjp = jax.vjp(lambda *a, m=method: run(m, *a), *args)
            results.append((out, *vjp(cotangent)))
        return results

    results = both(jnp.asarray(0.8), Q, K, V, x)
    for dense, analytic in zip(*results, strict=True):
        np.testing.assert_allclose(analytic, dense, rtol=1e-12, atol=1e-13)


def test_masked_attention_falls_back_to_dense():
    x = tf.normalize(jax.random.normal(jax.random.key(7), (6, 3), jnp.float64))
    mask = tf.AttentionMask(causal=True)

    @jax.jit
    def both(x):
        return [
            tf.attend(
                x, jnp.asarray(1.0), None, None, None, normalized=True, method=method, mask=mask
            )
            for method in (tf.DenseAttention(), tf.AnalyticVJPAttention())
        ]

    dense, analytic = both(x)
    np.testing.assert_array_equal(analytic, dense)
