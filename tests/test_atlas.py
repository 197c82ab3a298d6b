"""The n-dependence atlas (docs/atlas.md): R8 selectivity, R9 lost in the middle, R10 the
Lipschitz constant of attention, R12 token sample complexity. Small sizes; the full
measurements are experiments/atlas_*.py."""

import functools
import importlib.util
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special
from scipy.linalg import expm

import transformer_flows as tf
from transformer_flows import theory
from transformer_flows.theory._selectivity import _limit_general

ROOT = Path(__file__).resolve().parents[1]


@functools.cache  # one module per script: executing it again costs seconds (matplotlib, jax)
def _experiment(name):
    # The scripts import their sibling helpers (experiments/_figure_output.py) as `python
    # experiments/x.py` would: with their own folder first on sys.path.
    if str(ROOT / "experiments") not in sys.path:
        sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ R8 selectivity


def test_selectivity_limit_on_s2_is_the_ein_integral_and_the_general_formula():
    # Independent form: Ein(u) = E1(u) + ln u + γ with scipy's E1, and the d-general triple
    # integral (Mecke formula, x-dependent Laplace functional) evaluated at d = 3.
    for c in (0.5, 1.0, 3.0):
        f = lambda u: math.exp(-u - (special.exp1(u) + math.log(u) + np.euler_gamma) / (2 * c))  # noqa: E731
        reference = integrate.quad(f, 0, np.inf, epsabs=1e-12, limit=200)[0]
        assert theory.selectivity_limit(c) == pytest.approx(reference, abs=1e-9)
    assert theory.selectivity_limit(1.0) == pytest.approx(0.72949, abs=5e-6)
    assert _limit_general(1.0, 3) == pytest.approx(theory.selectivity_limit(1.0), abs=1e-8)


def test_selectivity_limit_runs_from_zero_to_one_and_the_intensity_is_half_on_s2():
    values = theory.selectivity_limit([1e-3, 0.1, 1.0, 10.0, 1e3])
    assert np.all(np.diff(values) > 0)
    assert values[0] < 0.01 and values[-1] > 0.999
    A, alpha = theory.poisson_intensity(3)
    assert (A, alpha) == (pytest.approx(0.5), 0.0)
    # Intensity of n^{2/(d−1)}(1 − cos) near 0 for d = 5 against the exact law of the cosine.
    A, alpha = theory.poisson_intensity(5)
    t = 1e-6
    density = special.beta(2, 2) ** -1 * (t / 2 * (1 - t / 2)) / 2  # t/2 ~ Beta(2, 2)
    assert A * t**alpha == pytest.approx(density, rel=1e-5)


def test_sampled_largest_weight_matches_vectors_and_the_poisson_limit():
    # Vectors: a query against n uniform keys on S² (normalised Gaussians), float64 softmax.
    rng = np.random.default_rng(11)
    keys = rng.standard_normal((300, 400, 3))
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    n = keys.shape[1]
    scores = n * keys[..., 2]  # β<x, y_j> with x = e₃, β = n
    by_vectors = np.exp(scores.max(axis=1) - special.logsumexp(scores, axis=1))
    sampled = theory.sample_largest_weight(n, float(n), 3000, seed=1)
    full = theory.sample_largest_weight(n, float(n), 3000, seed=2, cutoff=None)
    se = lambda m: m.std(ddof=1) / np.sqrt(m.size)  # noqa: E731
    for a, b in ((by_vectors, sampled), (sampled, full)):
        assert abs(a.mean() - b.mean()) < 4 * math.hypot(se(a), se(b))
    # n = 400 is near the limit (finite-n bias measured < 0.005 from n = 100 on).
    assert abs(sampled.mean() - theory.selectivity_limit(1.0)) < 4 * se(sampled) + 0.01
    # Off the critical scaling: β = n^{1/2} spreads the weight, β = n^{3/2} selects one key.
    assert theory.sample_largest_weight(n, n**0.5, 300, seed=3).mean() < 0.2
    assert theory.sample_largest_weight(n, n**1.5, 300, seed=4).mean() > 0.95


def test_selectivity_arguments_are_checked():
    with pytest.raises(ValueError, match="`c` must be finite and > 0"):
        theory.selectivity_limit(0.0)
    with pytest.raises(ValueError, match="`d` must be an integer >= 2"):
        theory.selectivity_limit(1.0, d=1)
    with pytest.raises(ValueError, match="`cutoff`"):
        theory.sample_largest_weight(10, 1.0, 5, cutoff=-1.0)


# --------------------------------------------------------------------- R9 lost in the middle


def test_retrieval_modes_are_the_continuum_limit_of_the_linear_chain():
    """g_k(t; s) = lim N[e^{a_k t W} − I]_{N, sN}, W the ALiBi weight matrix (docs/atlas.md)."""
    n, beta, lam = 200, 1.0, 1.0
    W = np.zeros((n, n))
    for j in range(1, n):
        w = np.exp(-lam * (j - np.arange(j)) / n)
        W[j, :j] = w / w.sum()
    s = np.arange(1, n) / n
    for t in (1.0, 2.0):
        modes = theory.retrieval_modes(s, t, beta, lam, k_max=2)
        for k in (1, 2):
            chain = n * (expm(k**2 * special.iv(k, beta) * t * W) - np.eye(n))[-1, :-1]
            keep = s >= 0.125
            np.testing.assert_allclose(chain[keep], modes[k - 1][keep], rtol=0.015)


def test_retrieval_t_crit_is_where_the_right_end_slope_changes_sign():
    beta, lam = 1.0, 1.0
    t_crit = theory.retrieval_t_crit(beta, lam)
    assert t_crit == pytest.approx(2.457489, abs=1e-6)  # the authors' M = 8, 20 modes

    def right_slope(t):
        s = np.array([1 - 2e-4, 1 - 1e-4])
        p = theory.retrieval_profile(s, t, beta, lam)
        return (p[1] - p[0]) / 1e-4

    assert right_slope(0.98 * t_crit) > 0 > right_slope(1.02 * t_crit)
    # U shape below t_crit: an interior minimum.
    s = np.linspace(0.01, 0.99, 99)
    p = theory.retrieval_profile(s, 1.0, beta, lam)
    assert 0 < np.argmin(p) < len(s) - 1


def test_authors_causal_alibi_dynamics_is_the_library_field_with_token_rates():
    lim = _experiment("atlas_lost_in_middle")
    theta = np.random.default_rng(0).uniform(0, 2 * np.pi, 24)
    field = lim.authors_field(24, 1.3, 0.7)
    v = np.asarray(field(0.0, tf.angles_to_points(jnp.asarray(theta))))
    angular = v[:, 1] * np.cos(theta) - v[:, 0] * np.sin(theta)
    np.testing.assert_allclose(angular, lim.authors_velocity(theta, 1.3, 0.7), atol=1e-13)


def test_retrieval_estimator_by_parts_equals_the_direct_average_over_the_source_angle():
    """The R9 estimator's identity, per configuration: averaging over θ_j(0) on the circle (all
    other angles fixed, trapezoid rule, spectrally accurate), N Σ ω_k cos k(θ_N(t) − θ_j(0))
    and the same times ∂θ_N(t)/∂θ_j(0) agree; at t = 0 both are 0 for j < N."""
    lim = _experiment("atlas_lost_in_middle")
    n, j = 6, 2
    direct, by_parts = lim.retrieval_terms(n, 1.0, 1.0, [0.0, 1.0], 0.05, 8.0, 3)
    base = jnp.asarray(np.random.default_rng(3).uniform(0, 2 * np.pi, n))
    grid = base[None].repeat(96, 0).at[:, j].set(jnp.linspace(0, 2 * jnp.pi, 96, endpoint=False))
    both = jax.jit(jax.vmap(lambda theta: (direct(theta), by_parts(theta))))(grid)  # one compile
    a, b = (np.asarray(v)[:, :, j].mean(0) for v in both)
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert abs(a[1]) > 1e-2 and abs(a[0]) < 1e-12  # not a trivial zero at t = 1
    # The fast path (Fourier field, RK4 on the angles, hand-written adjoint) gives the same
    # per-configuration terms as `tf.solve` + `jax.jacrev` (RK4 on the embedded circle): equal up
    # to the two RK4 discretisations' difference, O(h⁴).
    fast = jax.jit(jax.vmap(lim.fast_retrieval(n, 1.0, 1.0, [0.0, 1.0], 0.05, 8.0, 3)))(grid)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(both[1]), rtol=1e-6, atol=1e-6)


def test_fourier_alibi_velocity_is_the_authors_right_hand_side():
    """O(N·K) field (Fourier series of h, prefix sums of the exponential ALiBi weights) against
    the authors' O(N²) sum, in float64 and float32 (fewer modes)."""
    lim = _experiment("atlas_lost_in_middle")
    theta = np.random.default_rng(1).uniform(0, 2 * np.pi, 40)  # 40: not a multiple of the block
    expected = lim.authors_velocity(theta, 1.3, 0.7)
    v64 = jax.jit(lim.alibi_velocity(40, 1.3, 0.7))(jnp.asarray(theta))
    v32 = jax.jit(lim.alibi_velocity(40, 1.3, 0.7, jnp.float32))(jnp.asarray(theta, jnp.float32))
    np.testing.assert_allclose(np.asarray(v64), expected, atol=1e-13)
    np.testing.assert_allclose(np.asarray(v32), expected, atol=2e-6)
    with pytest.raises(ValueError, match="lam"):
        lim.alibi_velocity(40, 1.0, 40.0)


def test_chain_profiles_equal_the_matrix_exponential():
    lim = _experiment("atlas_lost_in_middle")
    fast = lim.chain_profiles(48, [0.5, 2.0], 1.0, 0.8, 8.0, 20)
    for i, t in enumerate((0.5, 2.0)):
        np.testing.assert_allclose(fast[i], lim.chain_profile(48, t, 1.0, 0.8, 8.0, 20), atol=1e-10)


def test_profile_fits_recover_the_closed_form_minimum_and_t_crit():
    """The estimators used on the particles' 64-bin profiles, applied to the closed form's bins:
    minimum positions within 0.5 % and t_crit within 1 % of the exact ones (their own bias)."""
    lim = _experiment("atlas_lost_in_middle")
    n, ts = 1024, [1.0, 1.5, 2.0, 2.25, 2.5, 2.75]
    A = lim.bin_matrix(n)
    s = np.arange(1, n) / n
    profiles = np.stack([A @ theory.retrieval_profile(s, t, 1.0, 1.0) for t in ts])
    mins, t_crit = lim.features(A @ s, profiles, ts, [1.0, 1.5, 2.0])
    fine = np.linspace(0.05, 0.999, 20000)
    for t, m in zip((1.0, 1.5, 2.0), mins, strict=True):
        assert m == pytest.approx(fine[np.argmin(theory.retrieval_profile(fine, t, 1.0, 1.0))],
                                  rel=5e-3)  # fmt: skip
    assert t_crit == pytest.approx(theory.retrieval_t_crit(1.0, 1.0), rel=1e-2)
    # The shape fit recovers a known scale, offset and shift of the closed form (grid 0.001).
    shape = lambda x: theory.retrieval_profile(np.clip(x, 1e-3, 1 - 1e-3), 1.5, 1.0, 1.0)  # noqa: E731
    moved = np.stack([profiles[1], 0.7 * shape(A @ s - 0.03) + 0.4])
    shifts = np.linspace(-0.05, 0.05, 101)
    np.testing.assert_allclose(lim.shape_shifts(A @ s, moved, shape, shifts=shifts), [0.0, 0.03],
                               atol=1.5e-3)  # fmt: skip
    assert np.isnan(lim.sign_change(ts, np.ones(len(ts))))  # no crossing: nan, not a number
    with pytest.raises(ValueError, match="multiples"):
        lim.bin_matrix(100)


# ---------------------------------------------------------------------------- R10 Lipschitz


def _layer(x):
    return tf.attend(x, jnp.asarray(1.0, x.dtype), None, None, None, normalized=True)


# One compiled power iteration per input shape, shared by the R10 tests.
_lipschitz = jax.jit(lambda x: tf.local_lipschitz(_layer, x, key=jax.random.key(0), iterations=300))


@pytest.mark.parametrize("n", [4, 16])
def test_local_lipschitz_is_the_top_singular_value_and_grows_on_adversarial_inputs(n):
    d, radius = 5, 2 * math.sqrt(math.log(n))
    x = np.zeros((n, d))
    x[:, 0], x[0, 0] = radius / 2, radius
    x = jnp.asarray(x)
    lip = float(_lipschitz(x))
    if n == 4:  # the dense Jacobian's top singular value (one more compilation: once)
        dense = np.linalg.norm(np.asarray(jax.jacfwd(_layer)(x)).reshape(n * d, n * d), 2)
        assert lip == pytest.approx(dense, rel=1e-8)
    assert lip == pytest.approx({4: 2.12022, 16: 4.90024}[n], abs=1e-5)
    # The bound of docs/atlas.md: outputs j >= 2 moved by a unit step of x_1 along u.
    p = 1 / (1 + (n - 1) * math.exp(-(radius**2) / 4))
    assert lip >= math.sqrt(n - 1) * (p + p * (1 - p) * radius**2 / 4) - 1e-9


def test_lipschitz_slope_is_one_half_at_r_squared_eight_log_n():
    """R² = 8 log n: the key-1 weight p → 1 (1 − p ≈ 1/n), so the bound's factor
    p + p(1−p)R²/4 → 1 and the slope is ½ + O(log n/n) (docs/atlas.md); at R² = 4 log n it is
    ½ + 1/(2 + log n). The measured constant is |Df e| (e: x₁ moved along u) to 2e-3 and above
    the bound B."""
    lip = _experiment("atlas_lipschitz")
    ns = np.array([4, 16, 64])
    slopes = {}
    for c in (4.0, 8.0):
        values = []
        for n in ns:
            radius = float(lip.growing_radius(n, c))
            value = float(_lipschitz(lip.adversarial(int(n), 5, radius)))
            assert value >= lip.lower_bound(n, radius) - 1e-9
            if c == 8.0:
                assert value == pytest.approx(lip.directional_bound(n, radius), rel=2e-3)
            values.append(value)
        slopes[c] = np.polyfit(np.log(ns), np.log(values), 1)[0]
    assert abs(slopes[8.0] - 0.5) < 0.05
    assert slopes[4.0] > 0.6  # the c = 4 factor ½ + ¼ log n adds 1/(2 + log n)
    # The derived local slope is d log B/d log n (central differences in log n).
    for c in (4.0, 8.0):
        for n in (4.0, 50.0, 3000.0):
            h = 1e-5
            logs = [math.log(lip.lower_bound(m, lip.growing_radius(m, c)))
                    for m in (n * math.exp(-h), n * math.exp(h))]  # fmt: skip
            assert lip.bound_slope(c, n) == pytest.approx((logs[1] - logs[0]) / (2 * h), abs=1e-7)
    assert lip.bound_slope(4.0, 1e6) == pytest.approx(0.5 + 1 / (2 + math.log(1e6)), abs=1e-5)
    assert abs(lip.bound_slope(8.0, 1e6) - 0.5) < 1e-4


def test_local_lipschitz_checks_iterations():
    with pytest.raises(ValueError, match="`iterations` must be a positive integer"):
        tf.local_lipschitz(_layer, jnp.ones((2, 2)), key=jax.random.key(0), iterations=0)


# ----------------------------------------------------------------- R12 sample complexity


def test_attention_on_gaussian_tokens_converges_to_the_closed_form_at_rate_one_over_root_n():
    sc = _experiment("atlas_sample_complexity")
    Q, K, V = sc.weights()
    x = sc.probes(1.0)
    exact = sc.limit_map(x, Q, K, V)
    flat = (sc.M0 + 0 * x) @ V.T  # the untilted map (β = 0 in the limit): a positive control
    gamma = jax.jit(
        lambda y: tf.attend(
            jnp.asarray(x),
            jnp.asarray(1.0),
            *(jnp.asarray(w)[None] for w in (Q, K, V)),
            normalized=True,
            keys=y,
        )  # fmt: skip
    )
    errors = {}
    for n in (256, 4096):
        draws = [np.asarray(gamma(jnp.asarray(sc.tokens(n, s)))) for s in range(12)]
        errors[n] = np.mean([np.linalg.norm(g - exact, axis=1).max() for g in draws])
        assert np.mean([np.linalg.norm(g - flat, axis=1).max() for g in draws]) > 3 * errors[n]
    # Slope −1/2 between n = 256 and 4096: ratio 4; measured 3.6–4.4 over seeds.
    assert 2.8 < errors[256] / errors[4096] < 5.6
