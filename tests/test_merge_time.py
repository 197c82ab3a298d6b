"""The exact two-cluster merge time against quadrature, the particles and its limits."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special

import transformer_flows as tf

merge_time = tf.theory.two_cluster_merge_time


def _quadrature(beta, D0, D1, masses, n):
    """τ = n/(m_a + m_b) ∫_{D1}^{D0} e^{β(1 - cos D)}/sin D dD, float64 scipy."""
    value, _ = scipy.integrate.quad(
        lambda D: math.exp(beta * (1 - math.cos(D))) / math.sin(D), D1, D0, epsrel=1e-12
    )
    return n / sum(masses) * value


@pytest.mark.parametrize("beta", [0.0, 0.3, 5.0, 20.0])
@pytest.mark.parametrize(("D0", "D1"), [(1.0, 0.2), (2.5, math.pi / 2), (3.1, 0.5)])
def test_merge_time_is_the_quadrature_of_the_gap_equation(beta, D0, D1):
    exact = merge_time(beta, D0, D1, masses=(3, 2), n=7)
    assert exact == pytest.approx(_quadrature(beta, D0, D1, (3, 2), 7), rel=1e-9)


def test_merge_time_is_what_six_coincident_particles_do():
    """5 + 1 tokens on the circle under the staircase's rescaled USA angle field
    θ̇_i = (e^{-β}/n) Σ_j e^{β cos(θ_j - θ_i)} sin(θ_j - θ_i): the clusters stay tight, and the
    gap reaches D1 at the closed-form time (scipy event, float64)."""
    beta, D0, D1 = 4.0, 2.8, 1.0
    theta0 = np.array([0.0] * 5 + [D0])

    def field(_, theta):
        diff = theta[None, :] - theta[:, None]
        return np.exp(-beta) * np.mean(np.exp(beta * np.cos(diff)) * np.sin(diff), axis=1)

    def reached(_, theta):
        return theta[-1] - theta[0] - D1

    reached.terminal = True
    solution = scipy.integrate.solve_ivp(
        field, (0, 1e6), theta0, method="DOP853", rtol=1e-12, atol=1e-12, events=reached
    )
    assert np.ptp(solution.y[:5, -1]) < 1e-9
    tau = solution.t_events[0][0]
    assert tau == pytest.approx(merge_time(beta, D0, D1, masses=(5, 1), n=6), rel=1e-7)


def test_the_audited_value_beyond_the_horizon():
    """β = 50, D₀ = 3.0916, 5 + 1 of 6 tokens: log₁₀ τ = 43.484, beyond e^{2β} = 10^43.43."""
    log_tau = merge_time(50.0, 3.0916, masses=(5, 1), n=6, log10=True)
    assert log_tau == pytest.approx(43.484, abs=0.002)
    assert log_tau > 100 / math.log(10)


@pytest.mark.parametrize(("D", "decades"), [(2.5, 0.03), (3.0, 0.33), (3.1, 0.93)])
def test_laplace_overestimates_near_antipodal_clusters(D, decades):
    """The audit's error of the Laplace estimate at β = 50, in decades."""
    args = dict(masses=(5, 1), n=6, log10=True)
    error = merge_time(50.0, D, method="laplace", **args) - merge_time(50.0, D, **args)
    assert error == pytest.approx(decades, abs=0.005)


def test_laplace_is_the_large_beta_limit_away_from_antipodal():
    """Relative error of the Laplace estimate is O(1/(β(1 ± cos D₀))): it falls like 1/β."""
    errors = [
        merge_time(b, 2.0, masses=(1, 1), method="laplace") / merge_time(b, 2.0, masses=(1, 1)) - 1
        for b in (50.0, 100.0, 200.0)
    ]
    assert errors[0] > errors[1] > errors[2] > 0
    assert errors[0] / errors[1] == pytest.approx(2, rel=0.05)


def test_near_antipodal_clusters_take_a_logarithm_not_a_pole():
    """β(1 + cos D₀) ≪ 1: τ ≈ n/(2(m_a+m_b)) (e^{2β}(-γ_E - ln(β(1 + cos D₀))) + Ei(2β)), the
    E₁ term's small-argument form plus the Ei term (≈ e^{2β}/(2β): 0.2% here)."""
    beta, gap = 30.0, 1e-6
    D0 = math.pi - math.acos(1 - gap)  # 1 + cos D0 = gap
    tau = merge_time(beta, D0, masses=(2, 1), n=3)
    pole = math.exp(2 * beta) * (-np.euler_gamma - math.log(beta * gap))
    estimate = 0.5 * (pole + scipy.special.expi(2 * beta))
    assert tau == pytest.approx(estimate, rel=1e-4)


def test_log_space_is_continuous_and_finite_beyond_float64():
    """The direct and the scaled evaluations meet at 2β = 600; β = 1000 has a finite log."""
    below = merge_time(300 - 1e-9, 2.9, masses=(1, 1), log10=True)
    above = merge_time(300 + 1e-9, 2.9, masses=(1, 1), log10=True)
    assert above == pytest.approx(below, abs=1e-8)
    huge = merge_time(1000.0, 3.0916, masses=(5, 1), n=6, log10=True)
    assert np.isfinite(huge) and merge_time(1000.0, 3.0916, masses=(5, 1), n=6) == np.inf
    # The scaled branch against mpmath-free float64 at the largest β it can still exponentiate.
    assert 10.0 ** merge_time(340.0, 2.0, masses=(1, 1), log10=True) == pytest.approx(
        _quadrature(340.0, 2.0, math.pi / 2, (1, 1), 2), rel=1e-8
    )


def test_merge_time_broadcasts_over_beta_and_gaps():
    betas = np.array([[1.0], [10.0]])
    gaps = np.array([2.0, 2.5, 3.0])
    grid = merge_time(betas, gaps, masses=(1, 1))
    assert grid.shape == (2, 3)
    assert np.all(np.diff(grid, axis=1) > 0) and np.all(np.diff(grid, axis=0) > 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(beta=-1.0, D0=2.0, masses=(1, 1)), "`beta`"),
        (dict(beta=1.0, D0=4.0, masses=(1, 1)), "`D0`"),
        (dict(beta=1.0, D0=2.0, D1=2.5, masses=(1, 1)), "`D1`"),
        (dict(beta=1.0, D0=2.0, masses=(1, 0)), "`masses`"),
        (dict(beta=1.0, D0=2.0, masses=(3, 2), n=4), "`n`"),
        (dict(beta=1.0, D0=2.0, masses=(1, 1), method="saddle"), "`method`"),
    ],
)
def test_merge_time_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        merge_time(**kwargs)


def test_merge_time_to_tiny_gaps_is_finite_and_additive():
    """Gaps below 1e-8 (where 1 - cos D rounds to 0): with u = 2 sin²(D/2) the time stays
    finite, is additive over D0 → D2 → D1, and its tail is the small-gap limit
    n/(m_a + m_b) · ln(tan(D2/2)/tan(D1/2)) (e^{-βu} = 1 to 1e-8 there)."""
    total = merge_time(100.0, 0.6, 1e-9, masses=(2, 1), n=6)
    head = merge_time(100.0, 0.6, 1e-5, masses=(2, 1), n=6)
    tail = merge_time(100.0, 1e-5, 1e-9, masses=(2, 1), n=6)
    assert np.isfinite(total)
    assert total == pytest.approx(head + tail, rel=1e-10)
    assert tail == pytest.approx(2 * math.log(math.tan(5e-6) / math.tan(5e-10)), rel=1e-7)
