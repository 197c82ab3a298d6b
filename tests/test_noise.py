"""Noisy dynamics: `solve(field, x0, ts, noise=..., key=..., dt0=...)`.

Monte Carlo checks carry tolerances from their standard errors (4 SE unless stated); keys are
fixed, so every test is deterministic. Compile time dominates, so four programs serve all
tests: `_cloud` (IndependentNoise, vmapped over keys; d = 3 and d = 2), `_pairs`
(CommonNoise, vmapped over keys) and `_loss_and_grad` (one key, value and pathwise gradient).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import transformer_flows as tf

KEYS, TOKENS, KAPPA = 64, 64, 4.0
TS = jnp.array([0.0, 0.5, 1.0])


@jax.jit
def _cloud(beta, V, kappa, x0, keys, dt0):
    """States (keys, times, n, d) of SelfAttention(beta, V) with IndependentNoise(kappa)."""

    def one(x, key):
        field = tf.SelfAttention(beta, V=V)
        noise = tf.IndependentNoise(kappa)
        return tf.solve(field, x, TS, noise=noise, key=key, dt0=dt0).xs

    return jax.vmap(one)(x0, keys)


def _keys(seed, count=KEYS):
    return jax.random.split(jax.random.key(seed), count)


def _free_cloud(d, x0, dt0, seed=0):
    """No interaction: KEYS × TOKENS independent Brownian motions on S^{d-1}."""
    zero = jnp.zeros((d, d))
    return np.asarray(_cloud(0.0, zero, KAPPA, x0, _keys(seed), jnp.asarray(dt0)))


@pytest.mark.parametrize("d", [2, 3])
def test_brownian_motion_on_the_sphere(d):
    """No interaction, so every token is an independent Brownian motion on S^{d-1}; half the
    tokens start at e_1, half uniformly.

    - E<x(t), x(0)> = exp(-(d-1) t / κ): the generator is κ^{-1} Δ_S, whose eigenvalue on
      linear functions is -(d-1). The scheme's weak error is O(h) (Heun, same Brownian path
      at h and h/2), so the Richardson value 2 m(h/2) - m(h) is compared, to 4 standard
      errors; the O(h) bias itself is checked to halve with h (weak order 1).
    - The uniform measure is invariant: <x(1), e_1> of the uniform starts keeps the law of a
      uniform point, uniform on [-1, 1] for d = 3 (Archimedes), arcsine for d = 2 (mean 0,
      second moment 1/d within 4 standard errors, and a Kolmogorov–Smirnov test).
    """
    half = TOKENS // 2
    uniform = jax.vmap(lambda k: tf.sample_sphere(k, half, d))(_keys(10 + d))
    x0 = jnp.concatenate([jnp.zeros((KEYS, half, d)).at[..., 0].set(1.0), uniform], axis=1)
    xs = {h: _free_cloud(d, x0, 1 / h, seed=d) for h in (16, 32, 64)}
    c = {h: x[:, :, :half, 0] for h, x in xs.items()}  # <x(t), e_1> from e_1

    richardson = 2 * c[64] - c[32]
    exact = np.exp(-(d - 1) * np.asarray(TS) / KAPPA)
    mean = richardson.mean((0, 2))
    se = richardson.std((0, 2)) / np.sqrt(KEYS * half)
    assert np.all(np.abs(mean - exact)[1:] < 4 * se[1:]), (mean, exact, se)
    # Weak order 1: the differences m(h) - m(h/2) (same paths, small variance) halve.
    coarse, fine = (c[16] - c[32])[:, -1], (c[32] - c[64])[:, -1]
    ratio = coarse.mean() / fine.mean()
    assert 1.4 < ratio < 2.8, ratio
    # The saved states lie on the sphere (renormalised after every step, no NaN).
    assert tf.sphere_drift(jnp.asarray(xs[16])) < 1e-12

    u = xs[16][:, -1, half:, 0].ravel()
    n = u.size
    assert abs(u.mean()) < 4 * u.std() / np.sqrt(n)
    assert abs((u**2).mean() - 1 / d) < 4 * (u**2).std() / np.sqrt(n)
    law = stats.uniform(-1, 2) if d == 3 else stats.arcsine(-1, 2)
    assert stats.kstest(u, law.cdf).pvalue > 1e-3


def test_strong_order_one_half_against_a_fine_reference():
    """Heun against a reference at h = 1/256 on the same Brownian path (steps 2^-k land on
    the tree's nodes), E|x_h(1) - x_ref(1)| over KEYS × TOKENS Brownian motions on S^2. The
    sphere noise is non-commutative (the fields P_x e_k do not commute), so the strong order
    is 1/2; experiments/noise_orders.py measures it with attention and for other solvers."""
    x0 = jax.vmap(lambda k: tf.sample_sphere(k, TOKENS, 3))(_keys(21))

    def final(h):
        return _free_cloud(3, x0, 1 / h, seed=22)[:, -1]

    reference = final(256)
    hs = np.array([1 / 4, 1 / 8, 1 / 16, 1 / 32])
    errors = [np.linalg.norm(final(round(1 / h)) - reference, axis=-1).mean() for h in hs]
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert 0.35 < slope < 0.7, (slope, errors)


def test_vmap_over_keys_equals_a_loop_and_gradients_match_finite_differences():
    """One key at a time (`_loss_and_grad`) gives the rows of the vmapped `_cloud`, and the
    pathwise gradient (w.r.t. β, V and κ; same key) matches central differences."""
    x0 = jax.vmap(lambda k: tf.sample_sphere(k, TOKENS, 3))(_keys(31))
    keys, V, dt0 = _keys(32), jnp.eye(3) + 0.1 * jnp.ones((3, 3)), jnp.asarray(1 / 32)
    batch = np.asarray(_cloud(1.0, V, KAPPA, x0, keys, dt0))
    params = (jnp.asarray(1.0), V, jnp.asarray(KAPPA))
    (_, xs), grads = _loss_and_grad(params, x0[0], keys[0], dt0)
    np.testing.assert_allclose(np.asarray(xs), batch[0], rtol=0, atol=1e-13)
    (_, xs), _ = _loss_and_grad(params, x0[5], keys[5], dt0)
    np.testing.assert_allclose(np.asarray(xs), batch[5], rtol=0, atol=1e-13)
    # Different keys give different paths (the vmap does not reuse one key).
    assert np.abs(batch[0, -1] - batch[1, -1]).max() > 1e-2

    direction = (jnp.asarray(1.0), jax.random.normal(jax.random.key(33), (3, 3)), jnp.asarray(1.0))
    eps = 1e-5

    def shifted(sign):
        p = jax.tree_util.tree_map(lambda a, v: a + sign * eps * v, params, direction)
        return float(_loss_and_grad(p, x0[0], keys[0], dt0)[0][0])

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    exact = sum(float(jnp.sum(g * v)) for g, v in zip(grads, direction, strict=True))
    assert abs(fd - exact) < 1e-6 * max(1.0, abs(exact)), (fd, exact)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in grads)


@eqx.filter_jit
def _loss_and_grad(params, x0, key, dt0):
    def loss(params):
        beta, V, kappa = params
        field = tf.SelfAttention(beta, V=V)
        xs = tf.solve(field, x0, TS, noise=tf.IndependentNoise(kappa), key=key, dt0=dt0).xs
        mean = xs[-1].mean(0)
        return jnp.sum(mean**2), xs  # |mean of the tokens|^2: the order parameter squared

    return jax.value_and_grad(loss, has_aux=True)(params)


PAIR_TS = jnp.array([0.0, 0.5, 4.0])


@jax.jit
def _pairs(beta, V, sigma, x0, keys):
    """Two tokens on S^2 driven by one CommonNoise(sigma), (keys, times, 2, 3)."""

    def one(key):
        field = tf.SelfAttention(beta, V=V)
        noise = tf.CommonNoise(sigma)
        return tf.solve(field, x0, PAIR_TS, noise=noise, key=key, dt0=1 / 32).xs

    return jax.vmap(one)(keys)


def _aligned_probability(theta0, beta, attention, sigma):
    """P(u → 1) for u = <x_1, x_2> of two tokens, SA with V = I (or no interaction), common
    noise σ: z = artanh u solves dz = (2σ² tanh z + 2 w(z)) dt + 2σ dβ, w the weight of the
    other token (e^{βu}/(e^β + e^{βu})); the probability is the scale-function ratio
    ∫_{-∞}^{z0} s' / ∫ s', s'(z) = exp(-∫_0^z (2σ² tanh + 2w)/(2σ²))."""

    def w(z):
        u = np.tanh(z)
        return np.exp(beta * u) / (np.exp(beta) + np.exp(beta * u)) if attention else 0.0

    def scale_density(z):
        drift = integrate.quad(w, 0, z)[0] / sigma**2
        return np.exp(-drift) / np.cosh(z)

    z0 = np.arctanh(np.cos(theta0))
    below = integrate.quad(scale_density, -40, z0, limit=200)[0]
    return below / (below + integrate.quad(scale_density, z0, 40, limit=200)[0])


@pytest.mark.parametrize("attention", [False, True])
def test_common_noise_pairs_end_aligned_or_antipodal(attention):
    """d = 3, two tokens at angle θ0 = π/2. Without attention u = <x_1, x_2> solves
    du = -2σ²u(1-u²) dt + 2σ(1-u²) dβ (derived): |u| → 1, and the pair ends aligned with
    probability 1 - θ0/π = 1/2; SA with V = I adds 2w(1-u²) to the drift and raises it
    (quadrature above). Each token alone is a Brownian motion on the sphere:
    E<x_1(t), x_1(0)> = exp(-(d-1)σ²t/2)."""
    sigma, beta, keys = 1.0, 1.0, _keys(41 + attention, 512)
    x0 = jnp.eye(3)[:2]
    V = jnp.eye(3) if attention else jnp.zeros((3, 3))
    xs = np.asarray(_pairs(beta, V, sigma, x0, keys))
    u = np.einsum("kd,kd->k", xs[:, -1, 0], xs[:, -1, 1])
    assert np.median(1 - np.abs(u)) < 1e-4 and np.mean(np.abs(u) > 0.9) > 0.9
    aligned = (u > 0).mean()
    p = _aligned_probability(np.pi / 2, beta, attention, sigma)
    se = np.sqrt(p * (1 - p) / len(keys))
    assert abs(aligned - p) < 4 * se, (aligned, p, se)
    if attention:
        assert p > 0.5 + 6 * se  # the two cases are distinguished at this sample size
    else:
        assert p == pytest.approx(0.5, abs=1e-8)
    c = xs[:, 1, 0, 0]  # <x_1(1/2), x_1(0)>, x_1(0) = e_1
    if not attention:
        exact = np.exp(-(3 - 1) * sigma**2 * 0.5 / 2)
        assert abs(c.mean() - exact) < 4 * c.std() / np.sqrt(len(c))


@jax.jit
def _mixed(kappa, sigma, x0, keys, dt0):
    """No interaction, IndependentNoise(kappa) + CommonNoise(sigma): (keys, times, n, d)."""

    def one(key):
        noise = tf.IndependentNoise(kappa) + tf.CommonNoise(sigma)
        field = tf.SelfAttention(0.0, V=jnp.zeros((3, 3)))
        return tf.solve(field, x0, TS, noise=noise, key=key, dt0=dt0).xs

    return jax.vmap(one)(keys)


def test_independent_plus_common_noise_generators_add():
    """`IndependentNoise(κ) + CommonNoise(σ)`: two independent Brownian motions, so the
    generators add, κ^{-1}Δ_S + (σ²/2)Δ_S, and each token is a Brownian motion on S^2 with
    E<x(t), x(0)> = exp(-(d-1)(1/κ + σ²/2)t) (Richardson value of h and h/2 on the same paths,
    4 standard errors, as above). Two tokens starting together: the common noise alone moves
    them identically (they stay together to rounding); the independent part separates them."""
    kappa, sigma, x0 = 4.0, 1.0, jnp.zeros((4, 3)).at[:, 0].set(1.0)
    keys = _keys(51, 1024)
    xs = {h: np.asarray(_mixed(kappa, sigma, x0, keys, jnp.asarray(1 / h))) for h in (16, 32)}
    # Tokens of one key share the common rotation: the samples are the per-key means.
    c = (2 * xs[32][..., 0] - xs[16][..., 0]).mean(2)
    exact = np.exp(-2 * (1 / kappa + sigma**2 / 2) * np.asarray(TS))
    mean, se = c.mean(0), c.std(0) / np.sqrt(c.shape[0])
    assert np.all(np.abs(mean - exact)[1:] < 4 * se[1:]), (mean, exact, se)
    # Either noise alone decays at 1/2 or 1 per unit time: excluded at t = 1.
    assert np.abs(mean[-1] - np.exp(-1.0)) > 8 * se[-1]
    separated = 1 - np.einsum("ktd,ktd->kt", xs[32][:, :, 0], xs[32][:, :, 1])
    assert separated[:, -1].mean() > 0.1
    common = np.asarray(_pairs(1.0, jnp.zeros((3, 3)), sigma, x0[:2], keys[:8]))
    assert np.abs(common[:, :, 0] - common[:, :, 1]).max() < 1e-12
    noise = tf.IndependentNoise(kappa) + (tf.CommonNoise(sigma) + tf.IndependentNoise(1.0))
    assert [type(n).__name__ for n in noise.noises] == [
        "IndependentNoise",
        "CommonNoise",
        "IndependentNoise",
    ]


def test_errors_name_the_argument_and_the_fix(without_type_checker):
    field, x0, ts, key = (
        tf.SelfAttention(1.0),
        tf.sample_sphere(jax.random.key(0), 3, 3),
        [0, 1],
        jax.random.key(1),
    )
    noise = tf.IndependentNoise(2.0)
    with pytest.raises(ValueError, match="needs `key`"):
        tf.solve(field, x0, ts, noise=noise, dt0=0.1)
    with pytest.raises(ValueError, match="needs `dt0`"):
        tf.solve(field, x0, ts, noise=noise, key=key)
    with pytest.raises(ValueError, match="`key` was given without `noise`"):
        tf.solve(field, x0, ts, key=key)
    with pytest.raises(ValueError, match="one PRNG key"):
        tf.solve(field, x0, ts, noise=noise, key=jax.random.split(key, 3), dt0=0.1)
    with pytest.raises(ValueError, match="transformer_flows noise"):
        tf.solve(field, x0, ts, noise=2.0, key=key, dt0=0.1)
    with pytest.raises(ValueError, match="sphere fields only"):
        tf.solve(tf.Kuramoto(1.0), jnp.zeros(3), ts, noise=noise, key=key, dt0=0.1)
    with pytest.raises(ValueError, match="BacksolveAdjoint.*RecursiveCheckpointAdjoint"):
        tf.solve(field, x0, ts, noise=noise, key=key, dt0=0.1, adjoint=diffrax.BacksolveAdjoint())
    with pytest.raises(ValueError, match="steps the drift only"):
        tf.solve(field, x0, ts, noise=noise, key=key, dt0=0.1, solver=tf.NormalizedEuler())
    for solver, kind in [(diffrax.ShARK(), "additive"), (diffrax.ItoMilstein(), "commutative")]:
        with pytest.raises(ValueError, match=f"assumes {kind} noise"):
            tf.solve(field, x0, ts, noise=noise, key=key, dt0=0.1, solver=solver)
    with pytest.raises(ValueError, match="not supported with `noise`"):
        tf.solve(field, x0, ts, noise=noise, key=key, dt0=0.1, solver=diffrax.Kvaerno5())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`kappa` must be finite and > 0"):
            tf.IndependentNoise(bad)
    with pytest.raises(ValueError, match="`kappa`.*must be a scalar"):
        tf.IndependentNoise(jnp.ones(2))
    with pytest.raises(ValueError, match="`sigma` must be finite and > 0"):
        tf.CommonNoise(-1.0)
    with pytest.raises(ValueError, match="`noises` must hold transformer_flows noises"):
        tf.NoiseSum((tf.CommonNoise(1.0), 2.0))


SAVE_TS = jnp.array([0.0, 0.125, 0.375, 0.5, 0.875, 1.0])


@jax.jit
def _lone_tokens(keys):
    """One token (its SA drift P_x x is 0: a Brownian motion on S^2, κ = 1e4) per key, steps
    h = 1/4 on the Brownian tree's nodes, saves on and between steps."""

    def one(key):
        field, noise = tf.SelfAttention(1.0), tf.IndependentNoise(1e4)
        x0 = jnp.zeros((1, 3)).at[0, 0].set(1.0)
        return tf.solve(field, x0, SAVE_TS, noise=noise, key=key, dt0=0.25).xs[:, 0]

    return jax.vmap(one)(keys)


def test_saves_between_steps_have_the_interpolation_variance():
    """A save at t = t_k + s h between steps is normalize((1-s) x_k + s x_{k+1}); for the
    Brownian part its variance is t - s(1-s)h instead of t (docs/models.md). With κ = 1e4 the
    curvature of the sphere is negligible, so 1 - <x(t), e_1>² ≈ |x_⊥|² has mean
    (2/κ)(d-1)(t - s(1-s)h): the ratio to (2/κ)(d-1)t is 1 on steps and 1 - s(1-s)h/t
    between them (0.5, 0.833 and 0.929 at t = 1/8, 3/8, 7/8; 4 standard errors)."""
    xs = np.asarray(_lone_tokens(_keys(31, 8192)))
    spread = 1 - xs[:, 1:, 0] ** 2
    ts = np.asarray(SAVE_TS[1:])
    s = (ts / 0.25) % 1
    expected = 1 - s * (1 - s) * 0.25 / ts
    scale = 4 / 1e4 * ts
    ratio = spread.mean(0) / scale
    se = spread.std(0) / np.sqrt(spread.shape[0]) / scale
    np.testing.assert_allclose(expected, [0.5, 5 / 6, 1, 13 / 14, 1])
    assert np.all(np.abs(ratio - expected) < 4 * se), (ratio, expected, se)
    assert np.all(np.abs(ratio[[0, 1, 3]] - 1) > 4 * se[[0, 1, 3]])  # the effect is resolved
