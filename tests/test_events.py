"""`solve(..., stop_when=...)`: the first crossing of a condition, root-found on the dense
output, against float64 scipy references (the equiangular ODE, Thm 6.8, and the two-oscillator
Kuramoto closed form)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from scipy.integrate import solve_ivp

import transformer_flows as tf

from helpers import equiangular_reference, off_diagonal

N, DELTA, T1 = 4, 0.1, 6.0
TS = np.linspace(0.0, T1, 13)
# One vmapped program for every system: β (the last one never clusters by T1), the solve's
# tolerance (the fifth system at the default 1e-6), and the level of a second condition,
# "mean cosine down to `level`", which fires at ts[0] in the last system only (its mean cosine
# starts at 0 <= 0.5; a mean cosine never goes below -1/(n-1) > -1).
BETAS = np.array([0.0, 1.0, 3.0, 12.0, 1.0, 1.0])
TOLS = np.array([1e-10, 1e-10, 1e-10, 1e-10, 1e-6, 1e-10])
LEVELS = np.array([-1.0, -1.0, -1.0, -1.0, -1.0, 0.5])


def _reference_crossing(beta, delta=DELTA):
    """The first t with γ_β(t) = 1 - δ from (6.9), float64 DOP853 and its event root finder;
    inf when it comes after T1."""

    def rhs(t, g):
        return 2 * (1 - g) * ((N - 1) * g + 1) / (np.exp(beta * (1 - g)) + N - 1)

    def event(t, g):
        return g[0] - (1 - delta)

    event.terminal = True
    solution = solve_ivp(rhs, (0, T1), [0.0], events=event, method="DOP853", rtol=1e-13, atol=1e-15)
    crossings = solution.t_events[0]
    return crossings[0] if crossings.size else np.inf


@pytest.fixture(scope="module")
def stopped():
    x0 = tf.orthonormal_tokens(N, N)

    def one(beta, tol, level):
        conditions = (tf.all_clustered(DELTA), tf.reaches(tf.mean_cosine, level, direction="down"))
        return tf.solve(tf.SelfAttention(beta), x0, TS, rtol=tol, atol=tol, stop_when=conditions)

    return jax.jit(jax.vmap(one))(BETAS, TOLS, LEVELS)


def test_crossing_times_match_the_float64_reference(stopped):
    reference = np.array([_reference_crossing(beta) for beta in BETAS])
    # the setting is not trivial: the systems cross at different times, one never does
    assert np.isfinite(reference[:3]).all() and np.isinf(reference[3])
    assert np.all(np.diff(reference[:3]) > 0.1)
    times = np.asarray(stopped.event_time)
    tight = [0, 1, 2]
    np.testing.assert_allclose(times[tight], reference[tight], rtol=0, atol=1e-8)
    # at the default tolerance (1e-6) the crossing is exact to that tolerance, not to the saves
    assert abs(times[4] - reference[4]) <= 1e-5
    mask_clustered, mask_level = (np.asarray(m) for m in stopped.event_mask)
    np.testing.assert_array_equal(mask_clustered, [True, True, True, False, True, False])
    np.testing.assert_array_equal(mask_level, [False, False, False, False, False, True])
    np.testing.assert_array_equal(stopped.stopped, [True, True, True, False, True, True])
    assert np.all(np.asarray(stopped.succeeded))


def test_a_condition_that_never_fires_returns_t1(stopped):
    assert float(stopped.event_time[3]) == T1 and not bool(stopped.stopped[3])
    assert np.all(np.asarray(stopped.saved[3]))
    gram = np.einsum("tid,tjd->tij", stopped.xs[3], stopped.xs[3])
    reference = equiangular_reference(TS, N, BETAS[3], "SA")
    assert np.abs(off_diagonal(gram) - reference[:, None]).max() <= 1e-8
    assert reference[-1] < 1 - DELTA


def test_saves_after_the_stop_are_nan_and_before_it_the_solution(stopped):
    xs = np.asarray(stopped.xs)
    for system in (0, 1, 2, 4, 5):
        time = float(stopped.event_time[system])
        kept = TS <= time
        np.testing.assert_array_equal(stopped.saved[system], kept)
        assert np.isnan(xs[system, ~kept]).all()
        gram = np.einsum("tid,tjd->tij", xs[system, kept], xs[system, kept])
        reference = equiangular_reference(TS, N, BETAS[system], "SA")[kept]
        assert np.abs(off_diagonal(gram) - reference[:, None]).max() <= 1e-5
    # the condition held at ts[0]: only the start is a result
    assert float(stopped.event_time[5]) == 0.0 and stopped.saved[5].sum() == 1
    # a masked save is never read as a configuration: the observables refuse it
    with pytest.raises(ValueError, match="unit sphere"):
        tf.clustered_fraction(stopped.xs[1, -1])


def test_diffrax_event_passes_through_on_angles():
    """Two classical Kuramoto oscillators (β = 0): φ = θ_1 - θ_2 obeys φ' = -sin φ, so
    tan(φ/2) = tan(φ_0/2) e^{-t}, and cos φ reaches c at t* = ln(tan(φ_0/2)/tan(φ_c/2))."""
    phi0, level = 3.0, 0.5
    exact = np.log(np.tan(phi0 / 2) / np.tan(np.arccos(level) / 2))
    event = diffrax.Event(
        lambda t, theta, args, **kwargs: jnp.cos(theta[0] - theta[1]) - level,
        root_finder=optx.Bisection(rtol=1e-12, atol=1e-12),
    )
    traj = tf.solve(
        tf.Kuramoto(0.0),
        jnp.array([phi0, 0.0]),
        [0.0, 10.0],
        stop_when=event,
        rtol=1e-10,
        atol=1e-10,
    )
    assert abs(float(traj.event_time) - exact) <= 1e-8, (float(traj.event_time), exact)
    assert bool(traj.stopped) and bool(traj.succeeded)
    assert np.isnan(np.asarray(traj.xs[-1])).all() and np.isfinite(np.asarray(traj.xs[0])).all()


def test_bad_stop_when_is_refused_by_name(without_type_checker):
    x0, field = tf.orthonormal_tokens(3, 3), tf.SelfAttention(1.0)
    with pytest.raises(ValueError, match="`stop_when` must be a condition"):
        tf.solve(field, x0, [0.0, 1.0], stop_when=3.0)
    with pytest.raises(ValueError, match="must return a real scalar"):
        tf.solve(field, x0, [0.0, 1.0], stop_when=lambda t, x, args: tf.mean_cosine(x) > 0.5)
    with pytest.raises(ValueError, match="not supported with `noise`"):
        tf.solve(
            field,
            x0,
            [0.0, 1.0],
            stop_when=tf.all_clustered(),
            noise=tf.IndependentNoise(10.0),
            key=jax.random.key(0),
            dt0=0.1,
        )
    # float32 under x64 (these tests run with x64): diffrax's root find would clash on types.
    # (float32 with x64 off: 4.470019 against the reference 4.470027 at δ = 1e-3, β = 1.)
    with pytest.raises(ValueError, match="needs jax_enable_x64 off"):
        tf.solve(field, x0.astype(jnp.float32), [0.0, 1.0], stop_when=tf.all_clustered())
    with pytest.raises(ValueError, match="`direction` must be 'up' or 'down'"):
        tf.reaches(tf.mean_cosine, 0.5, direction="sideways")
    with pytest.raises(ValueError, match=r"`delta` must lie in \[0, 2\]"):
        tf.all_clustered(3.0)
