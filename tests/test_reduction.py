"""Token masses and the exact cluster reduction (issue 23, item 3).

k coincident tokens of mass 1 act exactly as one token of mass k (SA: log m_j added to the
scores; USA: weights m_j/M), so a system with duplicated tokens and the reduced weighted system
have the same trajectory and energy; `solve_reduced` merges tokens and restarts. Programs are
shared: one fixed-step (RK4) solve of each system serves several tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

# Four distinct tokens; token 0 appears three times, token 2 twice: masses (3, 1, 2, 1).
_DUPLICATES = np.array([0, 1, 2, 3, 0, 0, 2])
_MASSES = np.array([3.0, 1.0, 2.0, 1.0])
_TS = np.linspace(0.0, 1.0, 5)
_DT = 0.05
_FIELDS = {
    "SA": lambda **kw: tf.SelfAttention(3.0, **kw),
    "USA": lambda **kw: tf.UnnormalizedSelfAttention(3.0, **kw),
}


def _distinct():
    return np.asarray(tf.sample_sphere(jax.random.key(5), 4, 3, dtype=jnp.float64))  # x64: conftest


@pytest.fixture(scope="module", params=sorted(_FIELDS))
def pair(request):
    """(name, duplicated solve, weighted solve, reduced solve) with identical RK4 steps."""
    make = _FIELDS[request.param]
    x = jnp.asarray(_distinct())
    options = dict(solver=tf.RK4(), dt0=_DT)
    duplicated = tf.solve(make(), x[_DUPLICATES], _TS, **options)
    weighted = tf.solve(make(masses=_MASSES), x, _TS, **options)
    reduced = tf.solve_reduced(make(), x[_DUPLICATES], _TS, tolerance=0.0, chunk=8, **options)
    yield request.param, duplicated, weighted, reduced


def test_duplicated_tokens_are_one_weighted_particle(pair):
    """The 7-token system with repeats and the 4-particle system with masses (3, 1, 2, 1)
    agree along the whole trajectory (float64, the same RK4 steps)."""
    name, duplicated, weighted, _ = pair
    xs = np.asarray(duplicated.xs)
    # The repeats stay coincident with their original, bit for bit or nearly.
    np.testing.assert_allclose(xs[:, [4, 5, 6]], xs[:, [0, 0, 2]], atol=1e-14, rtol=0)
    np.testing.assert_allclose(xs[:, :4], np.asarray(weighted.xs), atol=1e-12, rtol=0)
    # They moved: the comparison is not of two constant trajectories.
    assert np.max(np.abs(xs[-1] - xs[0])) > 1e-2, name


def test_energy_with_masses_equals_energy_of_repeats(pair):
    _, duplicated, weighted, _ = pair
    for x_dup, x_w in zip(duplicated.xs, weighted.xs, strict=True):
        full = float(tf.energy(x_dup, 3.0))
        reduced = float(tf.energy(x_w, 3.0, masses=_MASSES))
        assert abs(full - reduced) <= 1e-12 * abs(full)
        # Direct float64 reference for the weighted sum.
        x = np.asarray(x_w)
        reference = (_MASSES[:, None] * _MASSES[None, :] * np.exp(3.0 * x @ x.T)).sum()
        assert reduced == pytest.approx(reference / (2 * 3.0 * 7**2), rel=1e-13)


def test_solve_reduced_is_exact_for_coincident_tokens(pair):
    """Repeated tokens are merged at t = 0 (tolerance 0) and the expanded trajectory equals
    the unreduced solve; masses, partition and merge time are recorded."""
    _, duplicated, _, reduced = pair
    assert reduced.succeeded
    np.testing.assert_array_equal(np.asarray(reduced.counts), 4)
    np.testing.assert_array_equal(np.asarray(reduced.merge_times), [0.0])
    np.testing.assert_array_equal(np.asarray(reduced.partitions[-1]), _DUPLICATES)
    np.testing.assert_array_equal(np.asarray(reduced.masses[-1, :4]), _MASSES)
    np.testing.assert_allclose(
        np.asarray(reduced.expand()), np.asarray(duplicated.xs), atol=1e-12, rtol=0
    )


@jax.jit
def _field_checks(x, theta):
    """Every field evaluation of the two tests below, compiled once."""
    ones = jnp.ones(x.shape[0])
    masses = jnp.asarray(_MASSES)
    out = {}
    for name, make in _FIELDS.items():
        out[name] = dict(
            plain=make()(0.0, x),
            ones=make(masses=ones)(0.0, x),
            plain_matrix=make().attention_matrix(0.0, x),
            ones_matrix=make(masses=ones).attention_matrix(0.0, x),
            repeated=make()(0.0, x[_DUPLICATES])[:4],
            blockwise=make(masses=masses, attention=tf.BlockwiseAttention(3))(0.0, x),
            rows=make(masses=masses).attention_matrix(0.0, x),
        )
    # jax.nn.dot_product_attention in float32 (its float64 path mixes in float32 constants).
    x32, m32 = x.astype(jnp.float32), masses.astype(jnp.float32)
    fused = tf.SelfAttention(3.0, masses=m32, attention=tf.FusedAttention())
    out["SA"]["fused"] = fused(0.0, x32)
    out["SA"]["repeated32"] = tf.SelfAttention(3.0)(0.0, x32[_DUPLICATES])[:4]
    for normalized in (True, False):
        out[f"angles {normalized}"] = dict(
            repeated=tf.Kuramoto(3.0, normalized=normalized)(0.0, theta[_DUPLICATES])[:4],
            weighted=tf.Kuramoto(3.0, normalized=normalized, masses=masses)(0.0, theta),
        )
    out["torus"] = dict(
        repeated=tf.torus_energy(theta[_DUPLICATES], 3.0),
        weighted=tf.torus_energy(theta, 3.0, masses=masses),
    )
    return out


@pytest.fixture(scope="module")
def field_checks():
    theta = tf.uniform_angles(jax.random.key(2), 4).astype(jnp.float64)
    return jax.device_get(_field_checks(jnp.asarray(_distinct()), theta))


def test_unit_masses_change_nothing_but_rounding(field_checks):
    """masses = 1 gives today's numbers: the attention matrices bit for bit; the fields to
    rounding, since on CPU masses = None takes the one-pass kernel (docs/scaling.md) and
    masses the pure-JAX path (bit for bit with the kernel off)."""
    for name in _FIELDS:
        checks = field_checks[name]
        np.testing.assert_allclose(checks["plain"], checks["ones"], rtol=0, atol=1e-14)  # a few ulp
        assert np.array_equal(checks["plain_matrix"], checks["ones_matrix"]), name


def test_masses_in_every_attention_method_and_the_angle_form(field_checks):
    """Blockwise (online softmax over key blocks), fused (`dot_product_attention`, SA) and the
    angle form on the circle give the weighted field of the repeated system; SA rows still
    sum to 1, USA rows to Σ_j m_j e^{s_ij}/M."""
    for name in _FIELDS:
        checks = field_checks[name]
        np.testing.assert_allclose(checks["blockwise"], checks["repeated"], atol=1e-14, rtol=0)
    sa = field_checks["SA"]
    np.testing.assert_allclose(sa["fused"], sa["repeated32"], atol=1e-6, rtol=0)
    x = _distinct()
    np.testing.assert_allclose(field_checks["SA"]["rows"].sum(axis=-1), 1.0, atol=1e-14)
    usa_rows = (_MASSES[None, :] * np.exp(3.0 * x @ x.T)).sum(axis=1) / _MASSES.sum()
    np.testing.assert_allclose(field_checks["USA"]["rows"][0].sum(axis=-1), usa_rows, rtol=1e-13)
    for normalized in (True, False):
        checks = field_checks[f"angles {normalized}"]
        np.testing.assert_allclose(checks["weighted"], checks["repeated"], atol=1e-14, rtol=0)
    torus = field_checks["torus"]
    assert float(torus["weighted"]) == pytest.approx(float(torus["repeated"]), rel=1e-14)


@pytest.mark.parametrize(
    ("masses", "kwargs", "match"),
    [
        ([1.0, -1.0, 1.0], {}, "finite and > 0"),
        ([1.0, 0.0, 1.0], {}, "finite and > 0"),
        ([1.0, np.nan, 1.0], {}, "finite and > 0"),
        ([[1.0, 1.0, 1.0]], {}, "1-D array"),
        ([1.0, 1.0, 1.0], {"causal": True}, "no single position"),
        ([1.0, 1.0, 1.0], {"alibi": 1.0}, "no single position"),
    ],
)
def test_bad_masses_are_refused_by_name(masses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tf.SelfAttention(1.0, masses=masses, **kwargs)


def test_masses_checked_against_tokens_and_under_jit():
    x = tf.sample_sphere(jax.random.key(0), 3, 2)
    with pytest.raises(ValueError, match="`masses` has 2 entries but `x0` has 3 tokens"):
        tf.solve(tf.SelfAttention(1.0, masses=[1.0, 2.0]), x, [0.0, 1.0])
    with pytest.raises(ValueError, match="`masses` has 2 entries"):
        tf.energy(x, 1.0, masses=[1.0, 2.0])

    @jax.jit
    def velocity(m):
        return tf.UnnormalizedSelfAttention(1.0, masses=m)(0.0, x)

    with pytest.raises(Exception, match="masses"):
        jax.block_until_ready(velocity(jnp.array([1.0, -2.0, 1.0])))


def test_solve_reduced_refuses_what_it_cannot_reduce():
    theta = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="natural frequency"):
        tf.solve_reduced(tf.Kuramoto(1.0, frequencies=[0.0, 1.0]), theta, [0.0, 1.0], tolerance=0.0)
    with pytest.raises(ValueError, match="does not take `observe`"):
        tf.solve_reduced(tf.Kuramoto(1.0), theta, [0.0, 1.0], tolerance=0.0, observe=jnp.sum)
    with pytest.raises(ValueError, match="`tolerance` must be"):
        tf.solve_reduced(tf.Kuramoto(1.0), theta, [0.0, 1.0], tolerance=-1.0)
    with pytest.raises(ValueError, match="one per particle"):
        tf.merge_particles(np.zeros(3), [1.0, 1.0], 0.1, angles=True)
    with pytest.raises(ValueError, match="needs a field with token masses"):
        tf.solve_reduced(tf.HardmaxAttention(), jnp.eye(2), [0.0, 1.0], tolerance=0.0)


def test_solve_reduced_against_the_unreduced_solve():
    """Three close pairs on the circle (SA, angle form, float64; symmetric, so they merge at
    the same save and only two particle counts compile): the pairs contract and are merged,
    and the reduced solve ends in the same clusters, at the same angles and energy as the
    unreduced one (to the O(tolerance²) error of merging and the solver's tolerance)."""
    third = 2 * np.pi / 3
    theta0 = jnp.array([0.0, 0.02, third, third + 0.02, 2 * third, 2 * third + 0.02])
    field = tf.Kuramoto(4.0, normalized=True)
    ts = jnp.array([0.0, 10.0, 20.0, 30.0, 40.0])
    options = dict(rtol=1e-11, atol=1e-11)
    unreduced = tf.solve(field, theta0, ts, **options)
    reduced = tf.solve_reduced(field, theta0, ts, tolerance=1e-7, chunk=4, **options)
    assert reduced.succeeded
    assert int(reduced.counts[0]) == 6 and int(reduced.counts[-1]) == 3
    assert 0 < float(reduced.merge_times[0]) <= 40.0
    np.testing.assert_array_equal(np.asarray(reduced.partitions[-1]), [0, 0, 1, 1, 2, 2])
    final = np.asarray(unreduced.xs[-1])
    # The unreduced pairs are within the tolerance at the end too: the same clustering.
    assert np.max(np.abs(final[::2] - final[1::2])) < 1e-7
    expanded = np.asarray(reduced.expand()[-1])
    np.testing.assert_allclose(expanded, final, atol=1e-8, rtol=0)
    count = int(reduced.counts[-1])
    e_reduced = tf.torus_energy(
        reduced.particles[-1, :count], 4.0, masses=reduced.masses[-1, :count]
    )
    e_full = tf.torus_energy(unreduced.xs[-1], 4.0)
    assert float(e_reduced) == pytest.approx(float(e_full), rel=1e-12)
    assert reduced.stats["num_steps"] > 0


def test_merge_particles_takes_the_mass_weighted_mean_direction():
    """Points: (2a + b)/|2a + b| with mass 3, chains merge (single linkage), untouched
    particles keep their bits; angles: the circular mean, next to the group's first member."""
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(1e-3), np.sin(1e-3), 0.0])
    c = np.array([np.cos(2e-3), np.sin(2e-3), 0.0])
    far = np.array([0.0, 0.0, 1.0])
    x, m, labels = tf.merge_particles(np.stack([far, a, b, c]), [1.0, 2.0, 1.0, 1.0], 1.5e-3)
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])
    np.testing.assert_array_equal(m, [1.0, 4.0])
    assert np.array_equal(x[0], far)
    mean = 2 * a + b + c
    np.testing.assert_allclose(x[1], mean / np.linalg.norm(mean), atol=1e-15)
    theta, m, labels = tf.merge_particles(
        np.array([np.pi - 1e-4, -np.pi + 1e-4, 1.0]), [3.0, 1.0, 1.0], 1e-3, angles=True
    )
    np.testing.assert_array_equal(labels, [0, 0, 1])
    # Across the cut at ±π: the mean is π - 1e-4/2 (masses 3 and 1), not 0 or a wrapped value.
    assert theta[0] == pytest.approx(np.pi - 0.5e-4, abs=1e-12)
    assert theta[1] == 1.0
