"""`theory.noise_threshold` and `theory.stationary_order_parameter` against closed forms: the
noisy Kuramoto model at β = 0, the Bessel-function thresholds, and the bifurcation's type."""

import numpy as np
import pytest
from scipy import optimize, special

import transformer_flows as tf


def test_thresholds_closed_forms():
    """κ_c = β/I_1(β) (USA), β I_0(β)/I_1(β) (SA) on the circle; d at β = 0 on S^{d-1};
    d = 3: κ_c = β/ŵ with ŵ = (3/β)(cosh β/β - sinh β/β²) ... i.e. 1/(3 i_1(β)/β) for USA."""
    beta = np.array([0.5, 1.0, 5.0, 20.0])
    usa = tf.theory.noise_threshold(beta=beta, d=2, model="USA")
    sa = tf.theory.noise_threshold(beta=beta, d=2, model="SA")
    np.testing.assert_allclose(usa, beta / special.iv(1, beta), rtol=1e-12)
    np.testing.assert_allclose(sa, beta * special.iv(0, beta) / special.iv(1, beta), rtol=1e-12)
    for d in (2, 3, 5):
        for model in ("SA", "USA"):
            assert tf.theory.noise_threshold(beta=0.0, d=d, model=model) == pytest.approx(d)
    # d = 3: Funk–Hecke ŵ_1 = (1/2)∫ e^{βt} t dt / β = (cosh β/β - sinh β/β²)/β.
    w1 = (np.cosh(beta) / beta - np.sinh(beta) / beta**2) / beta
    np.testing.assert_allclose(
        tf.theory.noise_threshold(beta=beta, d=3, model="USA"), 1 / w1, rtol=1e-10
    )
    # Higher modes are more stable: κ_2 = 4/(growth_rate(2)) > κ_1.
    assert np.all(tf.theory.noise_threshold(beta=beta, d=2, model="SA", ell=2) > sa)


def _kuramoto(kappa):
    if kappa <= 2:
        return 0.0
    return optimize.brentq(lambda r: r - special.i1(kappa * r) / special.i0(kappa * r), 1e-12, 1)


def test_beta_zero_is_noisy_kuramoto():
    """β = 0: r = I_1(κr)/I_0(κr), with the pitchfork at κ = 2 (both models)."""
    kappa = np.array([1.0, 1.9, 2.05, 2.5, 4.0, 10.0])
    expected = [_kuramoto(k) for k in kappa]
    for model in ("SA", "USA"):
        r = tf.theory.stationary_order_parameter(beta=0.0, kappa=kappa, model=model)
        np.testing.assert_allclose(r, expected, atol=1e-10)
    # Supercritical: I_1(x)/I_0(x) = x/2 - x³/16 + ... gives r² ≈ 8 (κ - 2)/κ³ near κ = 2.
    r = tf.theory.stationary_order_parameter(beta=0.0, kappa=2.001, model="SA")
    assert r == pytest.approx(np.sqrt(8 * 0.001 / 2.001**3), rel=2e-3)


def test_self_consistency_usa():
    """The returned r solves ρ ∝ exp(κ Φ[ρ]) independently: rebuild ρ from its Fourier series
    by plain fixed-point iteration on a grid started at the returned state's r_1."""
    beta, kappa = 1.0, 3.0
    r = tf.theory.stationary_order_parameter(beta=beta, kappa=kappa, model="USA")
    theta = np.linspace(0, 2 * np.pi, 512, endpoint=False)
    rho = np.exp(kappa * r * np.cos(theta))
    rho /= rho.sum() * (theta[1] - theta[0])
    kernel = np.exp(beta * np.cos(theta[:, None] - theta[None, :]))
    for _ in range(3000):
        phi = kernel @ rho * (theta[1] - theta[0]) / beta
        new = np.exp(kappa * (phi - phi.max()))
        new /= new.sum() * (theta[1] - theta[0])
        rho = new
    order = abs(np.sum(np.exp(1j * theta) * rho) * (theta[1] - theta[0]))
    assert order == pytest.approx(r, abs=1e-9)


def test_discontinuous_transition_usa():
    """USA at β = 5 (I_2/I_1 > 1/2): a stable clustered state exists below the linear
    threshold; branch='uniform' returns 0 there. SA at β = 1 is continuous (0 just below)."""
    kc = tf.theory.noise_threshold(beta=5.0, d=2, model="USA")
    kappa = kc * np.array([0.95, 1.1])
    clustered = tf.theory.stationary_order_parameter(beta=5.0, kappa=kappa, model="USA")
    assert clustered[0] > 0.5 and clustered[1] > clustered[0]
    uniform = tf.theory.stationary_order_parameter(
        beta=5.0, kappa=kappa[0], model="USA", branch="uniform"
    )
    assert uniform == 0.0
    kc = tf.theory.noise_threshold(beta=1.0, d=2, model="SA")
    r = tf.theory.stationary_order_parameter(
        beta=1.0, kappa=kc * np.array([0.99, 1.02]), model="SA"
    )
    assert r[0] == 0.0 and 0 < r[1] < 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="d"):
        tf.theory.stationary_order_parameter(beta=1.0, kappa=3.0, d=3, model="SA")
    with pytest.raises(ValueError, match="kappa"):
        tf.theory.stationary_order_parameter(beta=1.0, kappa=-1.0, model="SA")
    with pytest.raises(ValueError, match="branch"):
        tf.theory.stationary_order_parameter(beta=1.0, kappa=3.0, model="SA", branch="x")
    with pytest.raises(ValueError, match="model"):
        tf.theory.noise_threshold(beta=1.0, d=2, model="softmax")
