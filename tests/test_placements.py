"""Normalisation placements (Pre-LN, Peri-LN, nGPT, Mix-LN, no normalisation): each discrete
layer against the residual layer written out by hand, first-order convergence of the layers to
the ODE, the direction formula θ̇_i = s_i^{-1} P^⊥_{θ_i} A_i, the equiangular (ρ, r) reductions
and their asymptotic laws, the Gaussian law of attention without normalisation, the rescaled
form (9.3), jit/vmap/grad, and the errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import theory

N, D, BETA = 5, 4, 1.5


def _weights(seed=0, d=D):
    rng = np.random.default_rng(seed)
    return tuple(np.eye(d) + 0.4 * rng.standard_normal((d, d)) for _ in range(3))


def _attention_np(x, beta, Q, K, V):
    """Σ_j softmax_j(β<Qx_i, Kx_j>) V x_j, written out in numpy."""
    scores = beta * (x @ Q.T) @ (x @ K.T).T
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w @ (x @ V.T)


def _ln(x):
    """LN modelled as x/|x| (no centring, no affine parameters)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _start(seed=1, radius_spread=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    return x if radius_spread else _ln(x)


SA = tf.SelfAttention(BETA, *_weights())


@eqx.filter_jit
def _layers(field, x, t0, h, steps):
    """`steps` discrete layers of step h from t0 (what ResidualLayers steps, see the first test)."""
    return jax.lax.fori_loop(
        0, steps, lambda k, y: field.residual_layer(t0 + k * h, y, h), jnp.asarray(x)
    )


@eqx.filter_jit
def _rk4(field, x, t0, h, steps):
    """Classical RK4 on the continuous field (a light reference: one small compile per field)."""

    def step(k, y):
        t = t0 + k * h
        k1 = field(t, y)
        k2 = field(t + h / 2, y + h / 2 * k1)
        k3 = field(t + h / 2, y + h / 2 * k2)
        # Read the last stage inside the step: per-layer weights switch at t + h.
        k4 = field(t + h * (1 - 1e-12), y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, steps, step, jnp.asarray(x))


@eqx.filter_jit
def _layer(field, t, x, h):
    return field.residual_layer(t, x, h)


@eqx.filter_jit
def _velocity(field, t, x):
    return field(t, x)


@eqx.filter_jit
def _attention_matrix(field, x):
    return field.attention_matrix(0.0, x)


def _placements():
    return {
        "pre_ln": tf.PreLN(SA),
        "peri_ln": tf.PeriLN(SA),
        "ngpt": tf.NGPT(SA, alpha=0.7),
        "no_norm": tf.NoNorm(SA),
        "no_norm_rescaled": tf.NoNorm(SA, rescaled=True),
    }


# ------------------------------------------------------------------------------ discrete layers


def _hand_layer(name, x, h, t=0.0):
    Q, K, V = _weights()

    def attn(y):
        return _attention_np(y, BETA, Q, K, V)

    if name == "pre_ln":
        return x + h * attn(_ln(x))
    if name == "peri_ln":
        return x + h * _ln(attn(_ln(x)))
    if name == "ngpt":
        return _ln(x + 0.7 * h * (_ln(attn(x)) - x))
    if name == "no_norm":
        return x + h * attn(x)
    if name == "no_norm_rescaled":
        from scipy.linalg import expm

        raw = x @ expm(t * V).T
        return (raw + h * attn(raw)) @ expm(-(t + h) * V).T
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(_placements()))
def test_one_layer_is_the_residual_layer_written_by_hand(name):
    field = _placements()[name]
    x = _start(radius_spread=name != "ngpt")
    h = 0.3
    expected = _hand_layer(name, x, h)
    layer = _layer(field, 0.0, jnp.asarray(x), h)
    np.testing.assert_allclose(layer, expected, rtol=1e-12, atol=1e-12)
    # ResidualLayers steps exactly this layer: three steps from t = 0.6 (the rescaled form
    # depends on t).
    y = x
    for k in range(3):
        y = _hand_layer(name, y, 0.2, t=0.6 + 0.2 * k)
    three = tf.solve(field, x, [0.6, 1.2], solver=tf.ResidualLayers(), dt0=0.2)
    np.testing.assert_allclose(three.xs[-1], y, rtol=1e-10, atol=1e-10)


def test_mix_ln_layers_switch_from_post_ln_to_pre_ln():
    Q, K, V = (np.stack([w, w.T]) for w in _weights())  # two layers
    layered = tf.SelfAttention(BETA, Q, K, V, layer_duration=0.5)
    mix = tf.MixLN(layered, post_ln_layers=1)
    x = _start(radius_spread=False)
    assert mix.switch_time == 0.5
    np.testing.assert_allclose(mix.jump_times(), [0.5])
    post = _ln(x + 0.1 * _attention_np(x, BETA, Q[0], K[0], V[0]))
    np.testing.assert_allclose(_layer(mix, 0.2, jnp.asarray(x), 0.1), post, atol=1e-13)
    xr = 2.5 * x
    pre = xr + 0.1 * _attention_np(x, BETA, Q[1], K[1], V[1])
    np.testing.assert_allclose(_layer(mix, 0.7, jnp.asarray(xr), 0.1), pre, atol=1e-13)
    # The continuous limit (adaptive solve, stepping to the jump time): SA up to the switch,
    # then Pre-LN from the SA state.
    mixed = tf.solve(mix, x, jnp.asarray([0.0, 0.5, 1.0]), rtol=1e-11, atol=1e-11).xs
    sa = _rk4(layered, x, 0.0, 1 / 400, 200)
    pre_ln = _rk4(tf.PreLN(layered), sa, 0.5, 1 / 400, 200)
    np.testing.assert_allclose(mixed[1], sa, atol=1e-8)
    np.testing.assert_allclose(mixed[2], pre_ln, atol=1e-8)
    # k = 0 is Pre-LN, k = L is Post-LN throughout [0, L·τ).
    assert tf.MixLN(layered, post_ln_layers=0).switch_time == 0.0
    np.testing.assert_allclose(
        tf.MixLN(layered, post_ln_layers=2)(0.7, jnp.asarray(x)), layered(0.7, jnp.asarray(x))
    )


# (NoNorm's raw layer is the Euler step of Pre-LN's kind, and its rescaled layer is the raw one
# seen through e^{-tV}: the one-layer test above and the rescaled test below cover them.)
@pytest.mark.parametrize("name", ["pre_ln", "peri_ln", "ngpt"])
def test_layers_converge_to_the_ode_at_first_order(name):
    field = _placements()[name]
    x = _start(radius_spread=name != "ngpt")
    reference = _rk4(field, x, 0.0, 1 / 400, 400)  # RK4 error ~1e-11 here
    if name == "ngpt":
        reference = tf.normalize(reference)
    steps = np.array([0.1, 0.05, 0.025, 0.0125])
    errors = [float(jnp.max(jnp.abs(_layers(field, x, 0.0, h, round(1 / h)) - reference)))
              for h in steps]  # fmt: skip
    order = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 0.9 < order < 1.1, (order, errors)


# ------------------------------------------------------------------------ direction formula


def test_every_placement_moves_directions_by_the_common_formula():
    """θ̇_i = s_i^{-1} P^⊥_{θ_i} A_i(θ) with s = 1 (Post-LN), r (Pre-LN), r|A| (Peri-LN),
    |A|/α (nGPT): from the field's velocity, and from one discrete layer as h → 0."""
    x = jnp.asarray(_start())
    r = jnp.linalg.norm(x, axis=-1, keepdims=True)
    theta = x / r
    a = eqx.filter_jit(SA.drift)(0.0, theta)
    tangent = tf.project_tangent(theta, a)
    norm_a = jnp.linalg.norm(a, axis=-1, keepdims=True)
    alpha = 0.7
    cases = {
        "post_ln": (SA, theta, jnp.ones_like(r)),
        "pre_ln": (tf.PreLN(SA), x, r),
        "peri_ln": (tf.PeriLN(SA), x, r * norm_a),
        "ngpt": (tf.NGPT(SA, alpha=alpha), theta, norm_a / alpha),
    }
    for name, (field, state, s) in cases.items():
        expected = tangent / s
        velocity = _velocity(field, 0.0, state)
        radius = jnp.linalg.norm(state, axis=-1, keepdims=True)
        direction = state / radius
        theta_dot = tf.project_tangent(direction, velocity) / radius
        np.testing.assert_allclose(theta_dot, expected, rtol=1e-12, atol=1e-13, err_msg=name)
        errors = []
        for h in (1e-3, 5e-4):
            stepped = _layer(field, 0.0, state, h)
            fd = (stepped / jnp.linalg.norm(stepped, axis=-1, keepdims=True) - direction) / h
            errors.append(float(jnp.max(jnp.abs(fd - expected))))
        assert errors[0] < 5e-3 and 1.8 < errors[0] / errors[1] < 2.2, (name, errors)


def test_peri_ln_and_ngpt_are_finite_where_the_attention_vanishes():
    # Two antipodal tokens at β = 0: A_i = (θ_1 + θ_2)/2 = 0.
    x = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
    field = tf.SelfAttention(0.0)
    assert jnp.all(_velocity(tf.PeriLN(field), 0.0, 2 * x) == 0)
    assert jnp.all(_velocity(tf.NGPT(field), 0.0, x) == 0)
    grad = jax.jit(jax.grad(lambda y: jnp.sum(tf.PeriLN(field)(0.0, y) ** 2)))(2 * x)
    assert jnp.all(jnp.isfinite(grad))


# ---------------------------------------------------------------------- equiangular reductions


def _equiangular(n, d, rho0, r0):
    gram = (1 - rho0) * np.eye(n) + rho0 * np.ones((n, n))
    theta = np.linalg.cholesky(gram)
    return r0 * np.pad(theta, ((0, 0), (0, d - n)))


def _rho_r(xs):
    xs = np.asarray(xs)
    r = np.linalg.norm(xs, axis=-1)
    theta = xs / r[..., None]
    gram = np.einsum("tid,tjd->tij", theta, theta)
    n = xs.shape[1]
    off = gram[:, ~np.eye(n, dtype=bool)]
    return off, r


@pytest.mark.parametrize(
    "placement, rho0, r0", [("post_ln", 0.0, 1.0), ("pre_ln", 0.3, 2.0), ("peri_ln", 0.0, 1.0),
                            ("ngpt", -0.2, 1.0)]
)  # fmt: skip
def test_particles_follow_the_equiangular_ode(placement, rho0, r0):
    n, d, beta, alpha = 4, 5, 2.0, 0.6
    field = {
        "post_ln": tf.SelfAttention(beta),
        "pre_ln": tf.PreLN(tf.SelfAttention(beta)),
        "peri_ln": tf.PeriLN(tf.SelfAttention(beta)),
        "ngpt": tf.NGPT(tf.SelfAttention(beta), alpha=alpha),
    }[placement]
    ts = np.linspace(0.0, 6.0, 13)
    xs = tf.solve(field, _equiangular(n, d, rho0, r0), ts, rtol=1e-11, atol=1e-11).xs
    cosines, radii = _rho_r(xs)
    rho, r = theory.placement_equiangular(placement, beta, n, ts, rho0=rho0, r0=r0, alpha=alpha)
    # Every pair keeps the common cosine and radius; 1 − ρ to relative accuracy.
    np.testing.assert_allclose(1 - cosines, (1 - rho)[:, None] * np.ones_like(cosines), rtol=1e-7)
    np.testing.assert_allclose(radii, r[:, None] * np.ones_like(radii), rtol=1e-9)


def test_equiangular_asymptotic_laws():
    n, beta, alpha = 4, 2.0, 0.6
    ts = np.array([0.0, 8.0, 10.0])
    # Post-LN: d log(1−ρ)/dt → −2; nGPT: → −2α.
    for placement, rate in (("post_ln", 2.0), ("ngpt", 2 * alpha)):
        rho, _ = theory.placement_equiangular(placement, beta, n, ts * (2 / rate), alpha=alpha)
        slope = np.diff(np.log(1 - rho[1:]))[0] / np.diff(ts[1:] * (2 / rate))[0]
        assert abs(slope + rate) < 2e-3 * rate, (placement, slope)
    # Pre-LN and Peri-LN: r ~ t and (1 − ρ) r² → L (the same L for both, by the shared orbit).
    limit = theory.pre_ln_limit_constant(beta, n, rho0=0.3, r0=2.0)
    far = np.array([0.0, 1e3, 1e4])
    for placement in ("pre_ln", "peri_ln"):
        rho, r = theory.placement_equiangular(placement, beta, n, far, rho0=0.3, r0=2.0)
        np.testing.assert_allclose((1 - rho[-1]) * r[-1] ** 2, limit, rtol=1e-6)
        np.testing.assert_allclose(r[-1] / far[-1], 1.0, rtol=2e-3)
        # Positive control: 1/t² is the law, not 1/t.
        assert (1 - rho[-1]) * far[-1] > 100 * (1 - rho[-2]) * far[-2] * 1e-3
    assert limit > (1 - 0.3) * 2.0**2  # (1 − ρ) r² increases for β > 0 ...
    # ... and is conserved at β = 0, along the particle solve too.
    # (Same shapes and tolerances as the particle test of pre_ln: no new compilation.)
    x0 = _equiangular(4, 5, 0.3, 2.0)
    xs = tf.solve(tf.PreLN(tf.SelfAttention(0.0)), x0, np.linspace(0, 20, 13), rtol=1e-11,
                  atol=1e-11).xs  # fmt: skip
    cosines, radii = _rho_r(xs)
    np.testing.assert_allclose((1 - cosines[:, 0]) * radii[:, 0] ** 2, 0.7 * 4.0, rtol=1e-8)
    assert theory.pre_ln_limit_constant(0.0, 4, rho0=0.3, r0=2.0) == pytest.approx(2.8, 1e-12)


# ------------------------------------------------------------------------------ no normalisation


def test_gaussian_law_of_attention_without_normalisation():
    """n = 2048 i.i.d. N(m, Σ) tokens: the empirical mean and covariance follow ṁ = V(m +
    βΣKᵀQm), Σ̇ = AΣ + ΣAᵀ (started at the empirical moments) within the Monte-Carlo scale."""
    rng = np.random.default_rng(0)
    d, n, beta = 2, 2048, 1.0
    Q, K = (np.eye(d) + 0.3 * rng.standard_normal((d, d)) for _ in range(2))
    V = 0.5 * np.eye(d) + 0.3 * rng.standard_normal((d, d))
    m0, s0 = np.array([0.5, -0.2]), np.array([[0.3, 0.05], [0.05, 0.2]])
    x0 = m0 + rng.standard_normal((n, d)) @ np.linalg.cholesky(s0).T
    ts = np.linspace(0.0, 0.5, 6)
    field = tf.NoNorm(tf.SelfAttention(beta, Q, K, V))
    xs = np.asarray(tf.solve(field, x0, ts, solver=tf.RK4(), dt0=0.05).xs)
    mean = xs.mean(axis=1)
    centred = xs - mean[:, None]
    cov = np.einsum("tni,tnj->tij", centred, centred) / n
    m, s = theory.gaussian_moments(mean[0], cov[0], beta, ts, Q=Q, K=K, V=V)
    # Sampling scale of the moments: sqrt(tr Σ / n) = 0.016; the law's error over t is a
    # fraction t/2 of it (measured: 0.1–0.2 of this bound over seeds 0–2 at n = 4096).
    scale = np.sqrt(np.trace(s0) / n) * ts / 2
    assert np.all(np.abs(mean - m).max(axis=1) <= scale + 1e-12)
    assert np.all(np.abs(cov - s).max(axis=(1, 2)) <= scale + 1e-12)
    # Positive control: without the tilt (β = 0 in the law) the mean is far off.
    m_flat, _ = theory.gaussian_moments(mean[0], cov[0], 0.0, ts, Q=Q, K=K, V=V)
    assert np.abs(mean[-1] - m_flat[-1]).max() > 4 * scale[-1]


def test_rescaled_form_maps_back_and_keeps_the_attention_coefficients():
    from scipy.linalg import expm

    Q, K, V = _weights(3)
    field = tf.SelfAttention(BETA, Q, K, V)
    x0 = _start()
    ts = np.linspace(0.0, 1.5, 4)
    tol = dict(rtol=1e-11, atol=1e-11)
    rescaled_field = tf.NoNorm(field, rescaled=True)
    z = np.asarray(tf.solve(rescaled_field, x0, ts, **tol).xs)
    # The raw flow by RK4 from one save time to the next (h = 1/4000: the logits reach ~75 as
    # the states grow, and h = 1/400 left 1e-5).
    raw = [np.asarray(x0)]
    for t0 in ts[:-1]:
        raw.append(np.asarray(_rk4(tf.NoNorm(field), raw[-1], t0, 1 / 4000, 2000)))
    for k, t in enumerate(ts):
        np.testing.assert_allclose(z[k] @ expm(t * V).T, raw[k], rtol=1e-8, atol=1e-8)
        # (9.3): z sees the weights Q e^{tV}, K e^{tV}, and the same coefficients A_ij.
        moved = tf.SelfAttention(BETA, Q @ expm(t * V), K @ expm(t * V), V)
        np.testing.assert_allclose(
            _attention_matrix(moved, jnp.asarray(z[k])),
            _attention_matrix(field, jnp.asarray(raw[k])),
            atol=1e-8,
        )
        # ż_i = Σ_j A_ij V(z_j − z_i).
        weights = np.asarray(_attention_matrix(field, jnp.asarray(raw[k])))[0]
        velocity = weights @ z[k] @ V.T - z[k] @ V.T
        np.testing.assert_allclose(
            _velocity(rescaled_field, t, jnp.asarray(z[k])), velocity, atol=1e-10
        )


# --------------------------------------------------------------------------- jit, vmap, grad


def test_jit_vmap_and_grad_against_finite_differences():
    """One jitted, vmapped gradient (over β) of a loss through 10 nGPT layers, against central
    finite differences in β and α."""
    x0 = tf.normalize(jnp.asarray(_start()))
    ts = jnp.asarray([0.0, 0.5])

    def loss(beta, alpha):
        field = tf.NGPT(tf.SelfAttention(beta, *_weights()), alpha=alpha)
        xs = tf.solve(field, x0, ts, solver=tf.ResidualLayers(), dt0=0.05).xs[-1]
        return jnp.sum(xs[0] * xs[1]) + jnp.sum(xs[2] * xs[3])

    # One compiled program: value and gradient, vmapped over a batch that also holds the
    # finite-difference points.
    batched = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))
    beta, alpha, eps = 1.3, 0.8, 1e-5
    betas = jnp.asarray([beta, beta + eps, beta - eps, beta, beta])
    alphas = jnp.asarray([alpha, alpha, alpha, alpha + eps, alpha - eps])
    values, (g_beta, g_alpha) = batched(betas, alphas)
    np.testing.assert_allclose(g_beta[0], (values[1] - values[2]) / (2 * eps), rtol=1e-6)
    np.testing.assert_allclose(g_alpha[0], (values[3] - values[4]) / (2 * eps), rtol=1e-6)
    assert abs(float(g_beta[0])) > 1e-3 and abs(float(g_alpha[0])) > 1e-3  # not trivially 0


# ------------------------------------------------------------------------------------- errors


def test_wrapping_a_field_that_is_not_on_the_sphere_is_refused(without_type_checker):
    with pytest.raises(ValueError, match="wraps a sphere field"):
        tf.PreLN(tf.PreLN(SA))
    with pytest.raises(ValueError, match="wraps a sphere field"):
        tf.PeriLN(tf.Kuramoto(beta=1.0))


def test_errors_name_the_argument_and_the_fix():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            tf.NGPT(SA, alpha=bad)
    with pytest.raises(ValueError, match="alpha.*scalar"):
        tf.NGPT(SA, alpha=jnp.ones(3))
    layered = tf.SelfAttention(1.0, jnp.ones((3, D, D)), layer_duration=0.5)
    with pytest.raises(ValueError, match="post_ln_layers.*exceeds the field's 3 layers"):
        tf.MixLN(layered, post_ln_layers=4)
    with pytest.raises(ValueError, match="post_ln_layers"):
        tf.MixLN(layered, post_ln_layers=-1)
    with pytest.raises(ValueError, match="layer_duration"):
        tf.MixLN(SA, post_ln_layers=1)
    assert tf.MixLN(SA, post_ln_layers=2, layer_duration=0.25).switch_time == 0.5
    with pytest.raises(ValueError, match="one constant V"):
        tf.NoNorm(layered, rescaled=True)
    x0 = np.asarray(_start())
    x0[2] = 0.0
    for placement in (tf.PreLN, tf.PeriLN):
        with pytest.raises(ValueError, match=r"zero-norm tokens \(rows \[2\]\)"):
            tf.solve(placement(SA), x0, [0.0, 1.0])
    # Under jit the field itself refuses a zero row (a state reaching r = 0 mid-solve).
    with pytest.raises((eqx.EquinoxRuntimeError, RuntimeError), match="reached \\|x_i\\| = 0"):
        jax.block_until_ready(_velocity(tf.PreLN(SA), 0.0, jnp.asarray(x0)))
    with pytest.raises(ValueError, match="steps points on a sphere"):
        tf.solve(tf.PreLN(SA), _start(), [0.0, 1.0], solver=tf.NormalizedEuler(), dt0=0.1)


# ------------------------------------------------------------------------- experiment layer


def test_mean_cosine_and_mean_radius_read_directions_and_radii():
    x = _start()
    radii = np.linalg.norm(x, axis=-1)
    theta = x / radii[:, None]
    gram = theta @ theta.T
    expected = gram[~np.eye(N, dtype=bool)].mean()
    np.testing.assert_allclose(tf.mean_cosine(jnp.asarray(x)), expected, rtol=1e-12)
    np.testing.assert_allclose(tf.mean_cosine(jnp.asarray(theta)), expected, rtol=1e-12)
    np.testing.assert_allclose(tf.mean_radius(jnp.asarray(x)), radii.mean(), rtol=1e-12)


def test_configs_choose_placements_and_refuse_bad_parameters():
    from transformer_flows.experiment import ConfigError, config_from_dict, plan_sweep

    base = {
        "model": {"field": "SA", "n": 4, "d": 6, "weights": ["gaussian"]},
        "sweep": {"beta": 1.0, "starts": 1},
        "time": {"t1": 1.0, "num": 3},
    }
    plain = config_from_dict(base)
    # Configs without placements save (and fingerprint) exactly as before.
    assert {"placement", "placement_params"}.isdisjoint(plain.resolved()["model"])
    assert plain.resolved()["model"]["initial"] == "sphere"
    model = {
        **base["model"],
        "placement": ["pre_ln", "ngpt"],
        "placement_params": {"alpha": 0.5},
        "initial": ["sphere", "orthonormal"],
    }
    config = config_from_dict({**base, "model": model})
    shapes = plan_sweep(config).shapes
    assert {(s.placement, s.initial) for s in shapes} == {
        (p, i) for p in ("pre_ln", "ngpt") for i in ("sphere", "orthonormal")
    }
    with pytest.raises(ConfigError, match="alpha.*must be finite and > 0"):
        config_from_dict({**base, "model": {**model, "placement_params": {"alpha": -1.0}}})
    with pytest.raises(ConfigError, match="placement_params.gain`: got 1.0; not a parameter"):
        config_from_dict({**base, "model": {**model, "placement_params": {"gain": 1.0}}})
    with pytest.raises(ConfigError, match="unknown placement 'side_ln'"):
        config_from_dict({**base, "model": {**model, "placement": ["side_ln"]}})
    with pytest.raises(ConfigError, match="orthonormal' needs d >= n"):
        config_from_dict({**base, "model": {**model, "n": 8}})
