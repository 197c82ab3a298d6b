"""Field structure: heads sum (2.7), per-layer weights switch at boundaries, jit/vmap contracts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

from helpers import count_compilations

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
    per_layer = [tf.SelfAttention(2.0, V=V[layer])(0.0, x) for layer in range(L)]
    for t, layer in [(0.0, 0), (0.49, 0), (0.5, 1), (0.99, 1), (1.0, 2), (7.0, 2)]:
        np.testing.assert_allclose(field(t, x), per_layer[layer], rtol=1e-13, err_msg=f"t={t}")
    np.testing.assert_allclose(field.jump_times(), [0.5, 1.0])


@pytest.mark.parametrize("solver_options", [TIGHT, dict(solver=tf.RK4(), dt0=0.01)])
def test_layered_solve_equals_sequential_constant_solves(getkey, solver_options):
    L, d, tau = 3, 3, 0.5
    Q, K = jax.random.normal(getkey(), (2, L, d, d))
    x0 = tf.sample_sphere(getkey(), 6, d)
    field = tf.SelfAttention(1.5, Q, K, layer_duration=tau)
    layered = tf.solve(field, x0, jnp.array([0.0, L * tau]), **solver_options).xs[-1]
    x = x0
    for layer in range(L):
        ts = jnp.array([layer * tau, (layer + 1) * tau])
        x = tf.solve(tf.SelfAttention(1.5, Q[layer], K[layer]), x, ts, **solver_options).xs[-1]
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
        traj = tf.solve(
            tf.SelfAttention(1.0, Q, K, V), tf.sample_sphere(key, 5, 4), jnp.array([0.0, 1.0])
        )
        return traj.xs[-1]

    batched = jax.vmap(final_states)(keys)
    looped = jnp.stack([final_states(k) for k in keys])
    np.testing.assert_allclose(batched, looped, atol=1e-9)


def test_count_compilations_counts_only_inside_the_block():
    def double(x):
        return 2 * x

    jitted, x, y, longer = jax.jit(double), jnp.arange(3.0), jnp.ones(3), jnp.arange(4.0)
    with count_compilations() as log:
        jitted(x)
        jitted(y)  # same shape and dtype: cached
    assert log.compiled == ["jit(double)"] and log.traced == ["double"]
    with count_compilations() as inner:
        jitted(x)
    assert inner.compiled == []
    jitted(longer)  # a new shape compiles, but after both blocks have closed
    assert log.compiled == ["jit(double)"] and inner.compiled == []


def test_new_values_do_not_recompile_and_new_shapes_do(getkey):
    ts = jnp.linspace(0, 1, 3)
    x0 = tf.sample_sphere(getkey(), 5, 3)
    V = jax.random.normal(getkey(), (3, 3))
    tf.solve(tf.SelfAttention(1.0, V=V), x0, ts)
    same_shapes = {
        "new β": ((tf.SelfAttention(2.5, V=V), x0, ts), {}),
        "new weights": ((tf.SelfAttention(1.0, V=-V), x0, ts), {}),
        "new start and times": (
            (tf.SelfAttention(1.0, V=V), tf.sample_sphere(getkey(), 5, 3), ts + 1.0),
            {},
        ),
        "new tolerances": ((tf.SelfAttention(1.0, V=V), x0, ts), dict(rtol=1e-5, atol=1e-7)),
    }
    for change, (args, options) in same_shapes.items():
        with count_compilations() as log:
            traj = tf.solve(*args, **options)
        assert log.compiled == [] and log.traced == [], (change, log)
        assert traj.xs.shape == (3, 5, 3)
    # Positive control: one more token changes every shape, so the solve must compile again.
    x_more = tf.sample_sphere(getkey(), 6, 3)
    with count_compilations() as log:
        tf.solve(tf.SelfAttention(1.0, V=V), x_more, ts)
    assert "jit(_solve)" in log.compiled, log


def test_observe_saves_statistics_instead_of_states(getkey):
    x0 = tf.sample_sphere(getkey(), 6, 3)
    ts = jnp.linspace(0, 3, 7)
    full = tf.solve(tf.SelfAttention(1.0), x0, ts, **TIGHT)
    observed = tf.solve(tf.SelfAttention(1.0), x0, ts, **TIGHT, observe=lambda x: tf.energy(x, 1.0))
    assert observed.xs is None and observed.observed.shape == (7,)
    np.testing.assert_allclose(
        observed.observed, jax.vmap(tf.energy, (0, None))(full.xs, 1.0), rtol=1e-12
    )


def test_leaves_are_beta_and_weights_which_vmap_and_grad_act_on(getkey):
    """β and V are the only leaves (Q = K = None is the identity; the attention method is
    static), so in_axes with exactly the field's leaf structure batch it over β and V, and
    the gradient is a field-shaped pytree whose leaves are the derivatives in β and V."""
    V = jax.random.normal(getkey(), (3, 3))
    x = tf.sample_sphere(getkey(), 5, 3)
    field = tf.SelfAttention(1.0, V=V)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(field)
    assert [jax.tree_util.keystr(path) for path, _ in with_paths] == [".beta", ".V"]
    assert [leaf.shape for _, leaf in with_paths] == [(), (3, 3)]
    assert all(eqx.is_inexact_array(leaf) for _, leaf in with_paths)

    betas, Vs = jnp.array([0.0, 0.5, 2.0]), jax.random.normal(getkey(), (3, 3, 3))
    batched = jax.vmap(lambda b, v: tf.SelfAttention(b, V=v))(betas, Vs)
    assert jax.tree_util.tree_structure(batched) == treedef
    for in_axes, fields, looped in [
        ([0, 0], batched, [tf.SelfAttention(b, V=v) for b, v in zip(betas, Vs, strict=True)]),
        (
            [0, None],
            eqx.tree_at(lambda f: f.beta, field, betas),
            [tf.SelfAttention(b, V=V) for b in betas],
        ),
    ]:
        axes = jax.tree_util.tree_unflatten(treedef, in_axes)
        vmapped = jax.vmap(lambda f: f(0.0, x), in_axes=(axes,))(fields)
        np.testing.assert_allclose(
            vmapped,
            jnp.stack([f(0.0, x) for f in looped]),
            rtol=1e-12,
            atol=1e-14,
            err_msg=str(in_axes),
        )

    readout = jax.random.normal(getkey(), (5, 3))

    def loss(f):
        return jnp.sum(readout * f(0.0, x))

    grad = jax.grad(loss)(field)
    assert jax.tree_util.tree_structure(grad) == treedef
    h, direction = 1e-6, jax.random.normal(getkey(), (3, 3))
    d_beta = (loss(tf.SelfAttention(1.0 + h, V=V)) - loss(tf.SelfAttention(1.0 - h, V=V))) / (2 * h)
    d_V = (
        loss(tf.SelfAttention(1.0, V=V + h * direction))
        - loss(tf.SelfAttention(1.0, V=V - h * direction))
    ) / (2 * h)
    np.testing.assert_allclose(grad.beta, d_beta, rtol=1e-7)
    np.testing.assert_allclose(jnp.sum(grad.V * direction), d_V, rtol=1e-7)


@pytest.mark.parametrize(
    "query_key, value, symmetric",
    [
        ("ginibre", "qk", False),
        ("ginibre", "ginibre", False),
        ("goe", "qk", True),
        ("goe", "wishart", True),
    ],
)
def test_row_convention_is_the_transposed_value_matrix(getkey, query_key, value, symmetric):
    """The authors' row tokens times V on the right are Vᵀ on column tokens: the same draw,
    transposed; a different field exactly when V is not symmetric (Fig. 5(c) but not (b), (d))."""
    key, x = getkey(), tf.sample_sphere(getkey(), 6, 5)
    Q, K, V = tf.random_weights(key, 5, query_key=query_key, value=value)
    Qr, Kr, Vr = tf.random_weights(
        key, 5, query_key=query_key, value=value, value_convention="rows"
    )
    np.testing.assert_array_equal(Qr, Q)
    np.testing.assert_array_equal(Kr, K)
    np.testing.assert_array_equal(Vr, V.T)
    # Row tokens X (n, d): softmax(β X Qᵀ K Xᵀ) X V, the authors' update, equals our field with Vᵀ.
    A = jax.nn.softmax(1.3 * (x @ Q.T) @ (x @ K.T).T, axis=-1)
    np.testing.assert_allclose(
        tf.SelfAttention(1.3, Qr, Kr, Vr).drift(0.0, x), A @ x @ V, rtol=1e-10, atol=1e-12
    )
    differs = float(jnp.max(jnp.abs(Vr - V)))
    assert (differs < 1e-12) if symmetric else (differs > 0.1)
