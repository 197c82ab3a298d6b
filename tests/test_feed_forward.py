"""The feed-forward field w σ(a x + b) and the Transformer block (GLPR (2.8)).

- The drift is w σ(a x + b) token by token, for every named activation and a callable.
- Exact solution: σ = identity, b = 0, w a = M (hidden width m > d) gives
  x(t) = e^{tM} x0 / ‖e^{tM} x0‖ per token; with two layers the product of the layers' maps.
- Reductions: attention switched off (V = 0) the block is the feed-forward flow, feed-forward
  switched off (w = 0) it is self-attention, exactly.
- The discrete layer is the Lie–Trotter composition of the parts' Post-LN layers, and
  `ResidualLayers` converges to the continuous block at order 1.
- Reverse-mode gradients through the block's solve match central finite differences; a fit
  of the feed-forward term alone lowers the loss and leaves the attention untouched.
- Errors: shapes, activations, layers, dimensions, config keys.

All solves share one structure (per-layer weights, L = 2) so that each program compiles once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import transformer_flows as tf
from transformer_flows.experiment import ConfigError, config_from_dict
from transformer_flows.experiment._build import build_fit_model, build_flow, build_task

N, D, M, L = 4, 3, 5, 2
T = 1.0
TAU = T / L
TS = np.linspace(0.0, T, 5)
TIGHT = 1e-12


def _random_block(seed, *, value_scale=1.0, ff_scale=1.0, activation="tanh"):
    """SA (β = 1, random per-layer Q, K, V) + FeedForward (random per-layer w, a, b)."""
    k = jax.random.split(jax.random.key(seed), 6)
    Q, K, V = (jax.random.normal(k[i], (L, D, D)) / np.sqrt(D) for i in range(3))
    attention = tf.SelfAttention(1.0, Q, K, value_scale * V, layer_duration=TAU)
    feed_forward = tf.FeedForward(
        ff_scale * jax.random.normal(k[3], (L, D, M)) / np.sqrt(M),
        jax.random.normal(k[4], (L, M, D)),
        jax.random.normal(k[5], (L, M)),
        activation=activation,
        layer_duration=TAU,
    )
    return tf.TransformerBlock(attention, feed_forward)


def _x0(seed=1):
    return tf.sample_sphere(jax.random.key(seed), N, D)


@eqx.filter_jit
def _adaptive(field, x0):
    return tf.solve(field, x0, TS, rtol=TIGHT, atol=TIGHT, max_steps=4096).xs


@eqx.filter_jit
def _layers(field, x0, dt):
    return tf.solve(field, x0, TS, solver=tf.ResidualLayers(), dt0=dt, max_steps=512).xs


def _readout(xs):
    R = jnp.linspace(-1.0, 1.0, xs[-1].size).reshape(xs[-1].shape)
    return jnp.sum(R * xs[-1])


# --- the drift -----------------------------------------------------------------------------


def test_drift_is_w_sigma_of_affine_map_per_token(getkey):
    w, a, b = (jax.random.normal(getkey(), s) for s in ((D, M), (M, D), (M,)))
    x = _x0()
    reference = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "silu": lambda z: z / (1 + np.exp(-z)),
        "identity": lambda z: z,
        # tanh-approximated GELU (jax.nn.gelu's default).
        "gelu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))),
    }

    @jax.jit  # one program for all of them
    def drifts(w, a, b, x):
        named = {n: tf.FeedForward(w, a, b, activation=n).drift(0.0, x) for n in reference}
        # A callable is accepted; b = None is a zero bias; the velocity is the projected drift.
        field = tf.FeedForward(w, a, activation=jnp.sin)
        return named, field.drift(0.0, x), field(0.0, x), field.drift(0.0, x[:1])

    named, drift, velocity, alone = drifts(w, a, b, x)
    x, w, a, b = (np.asarray(v) for v in (x, w, a, b))
    for name, sigma in reference.items():
        np.testing.assert_allclose(named[name], sigma(x @ a.T + b) @ w.T, rtol=1e-12, atol=1e-12)
    expected = np.sin(x @ a.T) @ w.T
    np.testing.assert_allclose(drift, expected, rtol=1e-12, atol=1e-12)
    tangent = expected - np.sum(x * expected, axis=1, keepdims=True) * x
    np.testing.assert_allclose(velocity, tangent, rtol=1e-12, atol=1e-12)
    # Tokens do not interact: token 0 alone moves as it does among the others.
    np.testing.assert_allclose(alone, expected[:1], rtol=1e-12, atol=1e-12)


# --- exact solution ------------------------------------------------------------------------


def test_linear_feed_forward_flow_is_normalized_matrix_exponential(getkey):
    """σ = identity, b = 0, w_l a_l = M_l: ẋ = P_x(M_l x), solved by x(t) = e^{tM}x0/‖.‖
    within a layer (the Riccati-type projection of the linear flow)."""
    Ms = np.asarray(jax.random.normal(getkey(), (L, D, D)))
    a = np.asarray(jax.random.normal(getkey(), (L, M, D)))  # full column rank (M > D)
    w = Ms @ np.linalg.pinv(a)  # w a = M a⁺ a = M
    np.testing.assert_allclose(w @ a, Ms, atol=1e-12)
    field = tf.FeedForward(w, a, np.zeros((L, M)), activation="identity", layer_duration=TAU)
    x0 = _x0()
    xs = np.asarray(_adaptive(field, x0))
    for k, t in enumerate(TS):
        first = min(t, TAU)
        maps = scipy.linalg.expm(first * Ms[0])
        if t > TAU:
            maps = scipy.linalg.expm((t - TAU) * Ms[1]) @ maps
        y = np.asarray(x0) @ maps.T
        exact = y / np.linalg.norm(y, axis=1, keepdims=True)
        np.testing.assert_allclose(xs[k], exact, rtol=0, atol=1e-10)
    assert np.max(np.abs(xs[-1] - xs[0])) > 0.1  # it moved


# --- reductions ----------------------------------------------------------------------------


@jax.jit
def _parts_and_block(block, x, h):
    """(drift, residual layer) of the block and of each part, at a time in each layer."""
    ts = (0.25 * TAU, 1.5 * TAU)

    def of(field):
        return [(field.drift(t, x), field.residual_layer(t, x, h)) for t in ts]

    return of(block), of(block.attention), of(block.feed_forward)


def test_block_reduces_to_each_part_exactly():
    """Attention off (V = 0): the block's drift is the feed-forward drift exactly, and its
    layer is the feed-forward layer (after a renormalisation of x, a no-op up to rounding);
    feed-forward off (w = 0): the same with self-attention. The flows are the solves of these
    drifts and layers, so they coincide."""
    x, h = _x0(), jnp.float64(0.1)
    for block, part in (
        (_random_block(2, value_scale=0.0), 2),
        (_random_block(3, ff_scale=0.0), 1),
    ):
        results = _parts_and_block(block, x, h)
        whole, alone, off = results[0], results[part], results[3 - part]
        for (drift, layer), (part_drift, part_layer), (off_drift, _) in zip(
            whole, alone, off, strict=True
        ):
            np.testing.assert_array_equal(off_drift, 0.0)
            np.testing.assert_array_equal(drift, part_drift)
            np.testing.assert_allclose(layer, part_layer, rtol=0, atol=1e-15)
            assert np.max(np.abs(layer - x)) > 1e-3  # the part moves the tokens
    # Positive control: with both parts on, the block is neither.
    (drift, layer), *_ = _parts_and_block(_random_block(3), x, h)[0]
    (sa_drift, sa_layer), *_ = _parts_and_block(_random_block(3), x, h)[1]
    assert np.max(np.abs(layer - sa_layer)) > 1e-3 and np.max(np.abs(drift - sa_drift)) > 1e-2


# --- the discrete layer: Lie–Trotter, first order ------------------------------------------


def test_residual_layer_is_lie_trotter_composition_of_post_ln_layers():
    block, x, h = _random_block(4), _x0(), 0.1
    for t in (0.2, 0.7):  # one time in each layer
        half = tf.normalize(x + h * block.attention.drift(t, x))
        expected = tf.normalize(half + h * block.feed_forward.drift(t, half))
        np.testing.assert_allclose(block.residual_layer(t, x, h), expected, rtol=0, atol=1e-15)
        # ... which is not one Post-LN step of the summed drift (NormalizedEuler).
        summed = tf.normalize(x + h * block.drift(t, x))
        assert np.max(np.abs(expected - summed)) > 1e-4


def test_residual_layers_converge_at_first_order_to_the_summed_field():
    block, x0 = _random_block(5), _x0()
    exact = np.asarray(_adaptive(block, x0))
    steps = (1 / 8, 1 / 16, 1 / 32)
    errors = [np.max(np.abs(np.asarray(_layers(block, x0, jnp.float64(h))) - exact)) for h in steps]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # Measured: errors 9.3e-2, 4.7e-2, 2.4e-2 (h = 1/8, 1/16, 1/32); orders 0.99, 0.99.
    assert np.all(np.abs(orders - 1) < 0.1), (errors, orders)
    assert errors[-1] < 0.05


# --- gradients and fitting -----------------------------------------------------------------


def test_gradient_through_block_matches_central_differences(getkey):
    """Reverse mode through the ResidualLayers solve (the exact derivative of the discrete
    map) against central differences along a random direction in every leaf (β, Q, K, V,
    w, a, b), per-layer weights included."""
    block, x0, dt = _random_block(6, activation="gelu"), _x0(), jnp.float64(1 / 16)
    params, static = eqx.partition(block, eqx.is_inexact_array)

    def loss(p):
        return _readout(_layers(eqx.combine(p, static), x0, dt))

    grad = jax.jit(jax.grad(loss))(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(getkey(), len(leaves))
    direction = jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    )
    slope = sum(
        jnp.vdot(g, v)
        for g, v in zip(
            jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction), strict=True
        )
    )

    def shifted(s):
        return jax.tree_util.tree_map(lambda p, v: p + s * v, params, direction)

    eps = 1e-5
    fd = (loss(shifted(eps)) - loss(shifted(-eps))) / (2 * eps)
    np.testing.assert_allclose(slope, fd, rtol=1e-6)
    assert abs(float(slope)) > 1e-3  # a nonzero derivative is compared


def test_feed_forward_fit_from_config_lowers_the_loss():
    """`model.feed_forward` in a fit config: per-layer FF weights, trained alone (the
    attention frozen): the loss falls and the frozen leaves are bit-for-bit unchanged."""
    config = config_from_dict(
        {
            "experiment": "fit",
            "precision": "float64",
            "model": {
                "d": 3,
                "layers": 2,
                "params": {"beta": 1.0},
                "feed_forward": {"width": 4, "activation": "tanh", "init_scale": 0.5},
            },
            "task": {
                "kind": "labeled",
                "n": 6,
                "anchors": [[0, 0, 1], [0, 0, -1]],
                "targets": [[1, 0, 0], [0, 1, 0]],
            },
            "train": {"parameters": ["feed_forward"], "steps": 12, "learning_rate": 0.1},
            "flow": {"horizon": 1.0},
            "solver": {"name": "residual_layers", "dt": 0.25},
        }
    )
    model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
    assert isinstance(model.feed_forward, tf.FeedForward)
    assert model.feed_forward.w.shape == (2, 3, 4) and model.feed_forward.b.shape == (2, 4)
    assert isinstance(tf.as_field(model), tf.TransformerBlock)
    # `fit`'s own step (one compiled program; `fit` would add the held-out evaluations).
    optimizer, spec = optax.adam(0.1), tf.trainable_spec(model, ["feed_forward"])
    step = tf.make_step(task, optimizer, flow, spec, batch_size=4)
    opt_state = optimizer.init(eqx.filter(eqx.filter(model, spec), eqx.is_inexact_array))
    trained, history = model, []
    for s in range(12):
        trained, opt_state, loss = step(trained, opt_state, jax.random.key(s))
        history.append(float(loss))
    # Measured: 0.62 -> 0.36 (first step; mean of the last three).
    assert np.mean(history[-3:]) < 0.8 * history[0], history
    for name in ("beta", "Q", "K", "V"):
        np.testing.assert_array_equal(getattr(trained, name), getattr(model, name))
    assert np.max(np.abs(trained.feed_forward.w - model.feed_forward.w)) > 1e-2


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(w=np.ones((3, 5)), a=np.ones((4, 3))), "do not fit"),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 2))), "do not fit"),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 3)), b=np.ones(4)), "one entry per hidden"),
        (dict(w=np.ones((2, 3, 5)), a=np.ones((2, 5, 3))), "layer_duration"),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 3)), layer_duration=1.0), r"\(L, d, m\)"),
        (dict(w=np.ones((3, 0)), a=np.ones((0, 3))), "empty axis"),
        (
            dict(w=np.ones((2, 3, 5)), a=np.ones((3, 5, 3)), layer_duration=1.0),
            "layer counts",
        ),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 3)), layer_duration=-1.0), "positive number"),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 3)), activation="softmax"), "choose among"),
        (dict(w=np.ones((3, 5)), a=np.ones((5, 3)), activation=3), "or a callable"),
        (dict(w=np.full((3, 5), np.nan), a=np.ones((5, 3))), "non-finite"),
        (dict(w=None, a=np.ones((5, 3))), "required"),
    ],
)
def test_feed_forward_refuses_bad_arguments(kwargs, match, without_type_checker):
    with pytest.raises(ValueError, match=match):
        tf.FeedForward(**kwargs)


def test_block_and_solve_refuse_mismatches(without_type_checker):
    ff = tf.FeedForward(np.ones((2, 3, 5)), np.ones((2, 5, 3)), layer_duration=0.5)
    with pytest.raises(ValueError, match="different token dimensions"):
        tf.TransformerBlock(tf.SelfAttention(1.0, V=np.eye(4)), ff)
    with pytest.raises(ValueError, match="Mismatched layers"):
        tf.TransformerBlock(tf.SelfAttention(1.0, V=np.ones((3, 3, 3)), layer_duration=0.5), ff)
    with pytest.raises(ValueError, match="must be a sphere field"):
        tf.TransformerBlock(tf.SelfAttention(1.0), tf.Kuramoto(1.0))
    # Layers of one part only are allowed (weights shared across layers).
    block = tf.TransformerBlock(tf.SelfAttention(1.0), ff)
    np.testing.assert_array_equal(block.jump_times(), [0.5])
    with pytest.raises(ValueError, match="feed-forward weights act on d=3"):
        tf.solve(block, tf.sample_sphere(jax.random.key(0), 4, 4), [0.0, 1.0])


@pytest.mark.parametrize(
    "model, train, match",
    [
        ({"feed_forward": {"activation": "softmax"}}, {}, "unknown activation"),
        ({"feed_forward": {"width": 0}}, {}, "width"),
        ({}, {"parameters": ["Q", "feed_forward"]}, "set model.feed_forward"),
    ],
)
def test_fit_config_refuses_bad_feed_forward(model, train, match):
    raw = {
        "experiment": "fit",
        "model": {"d": 3, **model},
        "task": {"kind": "labeled", "n": 4, "anchors": [[0, 0, 1]], "targets": [[1, 0, 0]]},
        "train": {"steps": 1, "learning_rate": 0.1, **train},
        "flow": {"horizon": 1.0},
    }
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)
