"""Field structure: heads sum (2.7), per-layer weights switch at boundaries, jit/vmap contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

TIGHT = dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("cls", [tf.SelfAttention, tf.UnnormalizedSelfAttention])
def test_multi_head_is_sum_of_single_heads(getkey, cls):
    H, k, d = 3, 2, 4
    Q, K = jax.random.normal(getkey(), (2, H, k, d))
    V = jax.random.normal(getkey(), (H, d, d))
    x = tf.sample_sphere(getkey(), 6, d)
    single = sum(cls(1.7, Q[h], K[h], V[h])(0.0, x) for h in range(H))
    np.testing.assert_allclose(cls(1.7, Q, K, V)(0.0, x), single, rtol=1e-12, atol=1e-12)
    # explicit (2.7) with non-square Q_h, K_h
    scores = 1.7 * jnp.einsum("hkd,id,hke,je->hij", Q, x, K, x)
    weights = jax.nn.softmax(scores, -1) if cls is tf.SelfAttention else jnp.exp(scores) / 6
    drift = jnp.einsum("hij,hde,je->id", weights, V, x)
    np.testing.assert_allclose(cls(1.7, Q, K, V).drift(0.0, x, None), drift, rtol=1e-12)


def test_layer_weights_switch_at_boundaries(getkey):
    L, d, tau = 3, 3, 0.5
    V = jax.random.normal(getkey(), (L, d, d))
    field = tf.SelfAttention(2.0, V=V, layer_duration=tau)
    x = tf.sample_sphere(getkey(), 5, d)
    layer = [tf.SelfAttention(2.0, V=V[l])(0.0, x) for l in range(L)]
    for t, l in [(0.0, 0), (0.49, 0), (0.5, 1), (0.99, 1), (1.0, 2), (7.0, 2)]:
        np.testing.assert_allclose(field(t, x), layer[l], rtol=1e-13, err_msg=f"t={t}")
    np.testing.assert_allclose(field.jump_times(), [0.5, 1.0])


@pytest.mark.parametrize("solver_options", [TIGHT, dict(solver=tf.RK4(), dt0=0.01)])
def test_layered_solve_equals_sequential_constant_solves(getkey, solver_options):
    L, d, tau = 3, 3, 0.5
    Q, K = jax.random.normal(getkey(), (2, L, d, d))
    x0 = tf.sample_sphere(getkey(), 6, d)
    field = tf.SelfAttention(1.5, Q, K, layer_duration=tau)
    layered = tf.solve(field, x0, jnp.array([0.0, L * tau]), **solver_options).xs[-1]
    x = x0
    for l in range(L):
        ts = jnp.array([l * tau, (l + 1) * tau])
        x = tf.solve(tf.SelfAttention(1.5, Q[l], K[l]), x, ts, **solver_options).xs[-1]
    np.testing.assert_allclose(layered, x, atol=1e-9)


def test_vmap_over_beta_equals_python_loop(getkey):
    x0 = tf.sample_sphere(getkey(), 6, 3)
    ts = jnp.linspace(0, 2, 5)
    betas = jnp.array([0.0, 1.0, 4.0])

    def run(beta):
        return tf.solve(tf.SelfAttention(beta), x0, ts, **TIGHT).xs

    batched = jax.vmap(run)(betas)
    looped = jnp.stack([run(b) for b in betas])
    np.testing.assert_allclose(batched, looped, atol=1e-10)


def test_vmap_over_starts_and_weights_under_jit(getkey):
    keys = jax.random.split(getkey(), 4)

    @jax.jit
    def final_states(key):
        Q, K, V = tf.random_weights(key, 4, query_key="goe", value="qk")
        traj = tf.solve(tf.SelfAttention(1.0, Q, K, V), tf.sample_sphere(key, 5, 4),
                        jnp.array([0.0, 1.0]))
        return traj.xs[-1]

    batched = jax.vmap(final_states)(keys)
    looped = jnp.stack([final_states(k) for k in keys])
    np.testing.assert_allclose(batched, looped, atol=1e-9)


def test_second_call_with_new_values_does_not_recompile(getkey):
    compiles = []

    def listener(event, duration, **kwargs):
        if "backend_compile" in event:
            compiles.append(event)

    ts = jnp.linspace(0, 1, 3)
    x_first, x_second = tf.sample_sphere(getkey(), 5, 3), tf.sample_sphere(getkey(), 5, 3)
    tf.solve(tf.SelfAttention(1.0, V=jnp.eye(3)), x_first, ts)
    second_field, later_ts = tf.SelfAttention(2.5, V=-jnp.eye(3)), ts + 1.0
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        traj = tf.solve(second_field, x_second, later_ts, rtol=1e-5)
    finally:
        jax.monitoring.clear_event_listeners()
    assert compiles == []
    assert traj.xs.shape == (3, 5, 3)


def test_observe_saves_statistics_instead_of_states(getkey):
    x0 = tf.sample_sphere(getkey(), 6, 3)
    ts = jnp.linspace(0, 3, 7)
    full = tf.solve(tf.SelfAttention(1.0), x0, ts, **TIGHT)
    observed = tf.solve(tf.SelfAttention(1.0), x0, ts, **TIGHT,
                        observe=lambda x: tf.energy(x, 1.0))
    assert observed.xs is None and observed.observed.shape == (7,)
    np.testing.assert_allclose(observed.observed, jax.vmap(tf.energy, (0, None))(full.xs, 1.0),
                               rtol=1e-12)


def test_fields_are_pytrees_with_trainable_leaves():
    field = tf.SelfAttention(1.0, V=jnp.eye(3))
    leaves = jax.tree_util.tree_leaves(field)
    assert len(leaves) == 2  # β and V; Q, K are the identity (None)
    grad = jax.grad(lambda f: jnp.sum(f(0.0, jnp.eye(3))))(field)
    assert grad.V.shape == (3, 3)
