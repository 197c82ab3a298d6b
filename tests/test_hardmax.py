"""Hardmax attention (9.5)–(9.6) on R^d, V = I unless said otherwise.

Derived here (docs/models.md, "Hardmax"): with A = QᵀK, the score of i for j is <Aᵀz_i, z_j>,
a linear functional of z_j, so C_i is the set of maximisers of a linear functional over the
tokens. A *leader* is a token with C_i = {i}; it does not move. Every leader is a vertex of
the convex hull (it is the unique maximiser of a nonzero linear functional), but not every
vertex is a leader. When A is symmetric positive definite and the tokens lie in the
ellipsoid zᵀAz <= 1 with the vertices on its boundary, Cauchy–Schwarz in the A-inner
product (z_iᵀAz_j < 1 = z_iᵀAz_i for z_j ≠ z_i in the ellipsoid) makes the leaders exactly
the vertices. The hull never grows (each velocity is a convex combination of z_j - z_i),
so leaders stay leaders; a follower i whose argmax is a leader l moves on the segment to it,
z_i(t) = z_l + e^{-t}(z_i(0) - z_l) (its scores are affine in e^{-t}, so the argmax stays l).
The discrete layer z ← z + h·ż gives z_l + (1 - h)^k (z_i(0) - z_l) after k layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.spatial import ConvexHull

import transformer_flows as tf

TIMES = np.linspace(0.0, 3.0, 7)
TIGHT = dict(rtol=1e-11, atol=1e-11, max_steps=4096)
# The discrete hardmax transformer: 12 layers of step 0.25 over TIMES.
LAYERS = dict(solver=tf.ResidualLayers(), dt0=0.25, max_steps=16)


def _ellipsoid_configuration(seed, d=3, vertices=6, followers=5):
    """(Q, K = Q, A = QᵀQ, tokens): vertices on {zᵀAz = 1}, followers random convex
    combinations of them (strictly inside the hull)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d)) + 2 * np.eye(d)
    u = rng.standard_normal((vertices, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    outer = np.linalg.solve(M, u.T).T  # zᵀMᵀMz = |u|² = 1
    weights = rng.dirichlet(np.ones(vertices), size=followers)
    return M, M.T @ M, np.concatenate([outer, weights @ outer])


def _argmax_sets(field, z):
    return np.asarray(field.attention_matrix(0.0, jnp.asarray(z))) > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_leaders_are_the_vertices_and_followers_go_straight_to_them(seed):
    M, A, z0 = _ellipsoid_configuration(seed)
    assert np.all(np.linalg.eigvalsh(A) > 0)
    field = tf.HardmaxAttention(M, M)
    sets = _argmax_sets(field, z0)
    leaders = np.flatnonzero([sets[i, i] and sets[i].sum() == 1 for i in range(len(z0))])
    np.testing.assert_array_equal(leaders, np.sort(ConvexHull(z0).vertices))
    targets = sets.argmax(axis=1)
    assert np.all(sets.sum(axis=1) == 1) and set(targets) <= set(leaders)

    exact = z0[targets] + np.exp(-TIMES)[:, None, None] * (z0 - z0[targets])
    xs = np.asarray(tf.solve(field, z0, TIMES, **TIGHT).xs)
    np.testing.assert_array_equal(
        xs[:, leaders], np.broadcast_to(z0[leaders], xs[:, leaders].shape)
    )
    np.testing.assert_allclose(xs, exact, rtol=0, atol=1e-9)
    # Collinear: each follower stays on the line through its start and its leader.
    direction = z0 - z0[targets]
    offset = xs - z0[targets]
    cross = offset - np.sum(offset * direction, -1, keepdims=True) * direction / np.maximum(
        np.sum(direction**2, -1, keepdims=True), 1e-300
    )
    assert np.max(np.linalg.norm(cross, axis=-1)) <= 1e-9

    # The discrete hardmax transformer (ResidualLayers, step h): z_l + (1 - h)^k (z_i - z_l).
    h = 0.25
    layers = np.asarray(tf.solve(field, z0, TIMES, **LAYERS).xs)
    k = np.round(TIMES / h)
    discrete = z0[targets] + ((1 - h) ** k)[:, None, None] * (z0 - z0[targets])
    np.testing.assert_allclose(layers, discrete, rtol=0, atol=1e-13)


def test_a_vertex_that_is_not_a_leader_moves():
    """Leaders ⊂ vertices, not equal in general: (1, 0) is a vertex of the hull of
    {(1, 0), (2, 0.1), (0, 5)} but <z_1, z_2> = 2 > |z_1|² = 1, so it moves towards z_2."""
    z0 = jnp.array([[1.0, 0.0], [2.0, 0.1], [0.0, 5.0]])
    assert sorted(ConvexHull(np.asarray(z0)).vertices) == [0, 1, 2]
    velocity = tf.HardmaxAttention()(0.0, z0)
    np.testing.assert_allclose(velocity[0], z0[1] - z0[0], rtol=0, atol=0)
    np.testing.assert_allclose(velocity[1:], 0.0, rtol=0, atol=0)


def test_example_9_3_tie_selects_the_average():
    """GLPR Example 9.3: z_1 = (1, 1), z_2 = (-1, 1), z_3 = 0. All three scores of z_3 are 0
    (a triple tie: C_3 = {1, 2, 3}, velocity (0, 2/3) at t = 0 only); for z_3 = (0, y) with
    0 < y < 1 the scores are y, y, y² so C_3 = {1, 2} (an exact tie in floating point too) and
    ẏ = 1 - y: our rule selects z_3(t) = (0, 1 - e^{-t}), the midpoint solution."""
    z0 = jnp.array([[1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    field = tf.HardmaxAttention()
    np.testing.assert_allclose(field.attention_matrix(0.0, z0)[2], [1 / 3, 1 / 3, 1 / 3])
    xs = np.asarray(tf.solve(field, z0, TIMES, **TIGHT).xs)
    np.testing.assert_array_equal(xs[:, :2], np.broadcast_to(z0[:2], xs[:, :2].shape))
    expected = np.stack([np.zeros_like(TIMES), 1 - np.exp(-TIMES)], axis=-1)
    np.testing.assert_allclose(xs[:, 2], expected, rtol=0, atol=1e-9)


# One switch of an argmax set (experiments/hardmax_integration.py): z_2 is a leader, z_1
# goes straight to it, z_3 follows z_1 until <z_3, a> = 0 (a = z_1(0) - z_2), then z_2.
SWITCHING = np.array([[0.3, 0.8], [0.0, 1.0], [0.2, 0.1]])


def _switching_exact(t):
    z2, a, w0 = SWITCHING[1], SWITCHING[0] - SWITCHING[1], SWITCHING[2] - SWITCHING[1]

    def before(s):
        return z2 + np.exp(-s) * (w0 + s * a)

    switch = brentq(lambda s: before(s) @ a, 0.0, 5.0)
    z3 = before(t) if t < switch else z2 + np.exp(-(t - switch)) * (before(switch) - z2)
    return np.stack([z2 + np.exp(-t) * a, z2, z3]), switch


def test_switching_adaptive_and_layers_against_the_piecewise_exact_solution():
    ts = np.linspace(0.0, 4.0, 7)  # the shapes of Example 9.3: one compiled program for both
    exact = np.stack([_switching_exact(t)[0] for t in ts])
    switch = _switching_exact(0.0)[1]
    assert ts[0] < switch < ts[1]  # measured t* = 0.3609
    # tie_tolerance = 0: the switch at the exact surface. Tsit5 rejects steps there (measured
    # 21 of 108 at tol 1e-10) and reaches the tolerance (measured error 6.5e-11).
    options = dict(TIGHT, rtol=1e-10, atol=1e-10)
    run = tf.solve(tf.HardmaxAttention(tie_tolerance=0.0), SWITCHING, ts, **options)
    assert int(run.stats["num_rejected_steps"]) > 0
    np.testing.assert_allclose(run.xs[-1], exact[-1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(run.xs, exact, rtol=0, atol=1e-8)  # dense output: 1.7e-9
    # The default τ = 1e-6 widens the switch to a band: an error floor linear in τ (measured
    # 6.9e-9 at tol 1e-10; 6.8e-7 at τ = 1e-4).
    banded = tf.solve(tf.HardmaxAttention(), SWITCHING, ts, **options).xs[-1]
    assert 1e-9 < np.max(np.abs(banded - exact[-1])) < 2e-8
    # The discrete layers converge at first order through the switch (3.1e-4 at h = 0.01).
    errors = [
        np.max(
            np.abs(
                tf.solve(
                    tf.HardmaxAttention(), SWITCHING, ts, solver=tf.ResidualLayers(), dt0=h
                ).xs[-1]
                - exact[-1]
            )
        )
        for h in (0.02, 0.01)
    ]
    assert errors[1] < 5e-4
    assert 1.7 < errors[0] / errors[1] < 2.3


def _softmax_velocity(beta, Q, K, z):
    """(9.4): Σ_j softmax_j(β<Q z_i, K z_j>) (z_j - z_i), V = I."""
    weights = tf.attention_weights(z, jnp.asarray(beta), Q[None], K[None], normalized=True)[0]
    return weights @ z - z


def test_softmax_field_tends_to_the_hardmax_at_rate_of_the_score_gap():
    """|v_β,i - v_∞,i| = |Σ_{j≠l} w_ij (z_j - z_l)| <= Σ_{j≠l} e^{-β(s_il - s_ij)} |z_j - z_l|,
    l the argmax: the error decays like e^{-βΔ}, Δ the smallest score gap to a runner-up."""
    M, _, z0 = _ellipsoid_configuration(0)
    Q = K = jnp.asarray(M)
    z = jnp.asarray(z0)
    hard = np.asarray(tf.HardmaxAttention(Q, K)(0.0, z))
    scores = np.asarray((z @ Q.T) @ (z @ K.T).T)
    top = scores.argmax(1)
    gaps = scores[np.arange(len(z0)), top][:, None] - scores
    distances = np.linalg.norm(z0[None, :, :] - z0[top][:, None, :], axis=-1)
    betas = np.array([100.0, 200.0, 400.0, 800.0])
    errors = []
    for beta in betas:
        error = np.linalg.norm(np.asarray(_softmax_velocity(beta, Q, K, z)) - hard, axis=-1)
        bound = np.sum(np.where(gaps > 0, np.exp(-beta * gaps) * distances, 0.0), axis=1)
        assert np.all(error <= bound * (1 + 1e-9) + 1e-15)
        errors.append(error.max())
    gap = np.min(np.where(gaps > 0, gaps, np.inf))
    slope = -np.log(errors[-1] / errors[-2]) / (betas[-1] - betas[-2])
    assert abs(slope - gap) <= 0.01 * gap, (slope, gap)  # measured 0.4%


def test_hardmax_under_jit_vmap_and_grad():
    """The field and its layer (the solves are diffrax's generic path, tested elsewhere)."""
    _, _, z0 = _ellipsoid_configuration(1)
    z = jnp.asarray(z0)

    def layer(V, z):
        return tf.HardmaxAttention(V=V).residual_layer(0.0, z, 0.25)

    V = jnp.eye(3)
    batch = jax.jit(jax.vmap(layer, in_axes=(None, 0)))(V, jnp.stack([z, 2 * z]))
    np.testing.assert_allclose(batch[0], layer(V, z), rtol=0, atol=1e-15)
    # Linear in the tokens: the argmax sets are invariant under z -> 2z.
    np.testing.assert_allclose(batch[1], 2 * batch[0], rtol=0, atol=1e-14)
    # d/dV and d/dz of a readout against central differences (C_i is locally constant).
    R = jnp.linspace(-1.0, 1.0, z.size).reshape(z.shape)
    rng = np.random.default_rng(3)
    dV, dz = (jnp.asarray(rng.standard_normal(shape)) for shape in ((3, 3), z.shape))

    def readout(V, z):
        return jnp.sum(R * layer(V, z))

    gV, gz = jax.jit(jax.grad(readout, argnums=(0, 1)))(V, z)
    step = 1e-6
    fd = (readout(V + step * dV, z + step * dz) - readout(V - step * dV, z - step * dz)) / (
        2 * step
    )
    np.testing.assert_allclose(jnp.sum(gV * dV) + jnp.sum(gz * dz), fd, rtol=1e-8)


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: tf.HardmaxAttention(tie_tolerance=-1e-3),
            "`tie_tolerance` must be finite and >= 0",
        ),
        (lambda: tf.HardmaxAttention(V=jnp.ones((2, 3, 3))), "one head"),
        (lambda: tf.HardmaxAttention(Q=jnp.ones((2, 3)), K=jnp.ones((3, 3))), "`Q` and `K`"),
        (lambda: tf.solve(tf.HardmaxAttention(), jnp.zeros(3), jnp.array([0.0, 1.0])), "(n, d)"),
        (
            lambda: tf.solve(tf.HardmaxAttention(V=jnp.eye(3)), jnp.zeros((2, 2)), [0.0, 1.0]),
            "d=2",
        ),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
