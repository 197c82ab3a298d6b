"""Value checks fire concretely (ValueError), under `jax.jit` and under `jax.vmap` (an equinox
runtime error), always naming the argument; valid input gives the unchecked numbers.

Under jit an `eqx.error_if` whose result is dropped is removed by XLA, so each check here is
one that used to be silently skipped. The compiled solves are shared module-wide (one compile
per function: jit of one solve, jit of a vmapped batch of two), and every case reuses them.
"""

import contextlib
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows._solve import _solve


@contextlib.contextmanager
def raises_at_run_time(message: str):
    """The equinox runtime error of a failed `eqx.error_if`, with `message` in it.

    Its Python type depends on the dispatch path, not on us: EquinoxRuntimeError inside
    `eqx.filter_jit` (solve's own jit, reached eagerly under plain vmap), JaxRuntimeError from
    a first `jax.jit` call, and ValueError from jax's C++ fast path once the function has run
    successfully. So accept those types, and tell a run-time error from a trace-time
    ValueError by equinox's marker in the text."""
    with pytest.raises((eqx.EquinoxRuntimeError, RuntimeError, ValueError), match=message) as info:
        yield
    assert isinstance(info.value, eqx.EquinoxRuntimeError) or "EquinoxRuntimeError" in str(
        info.value
    ), f"expected a run-time (eqx.error_if) error, got {type(info.value).__name__}"


N, D = 3, 2
X = tf.sample_sphere(jax.random.key(0), N, D)
TS = jnp.linspace(0.0, 0.2, 2)
THETA = jnp.array([0.1, 0.5, -0.3])
SOLVER = diffrax.Heun()  # adaptive (so rtol/atol are used) and cheap to compile
EYE = jnp.eye(D)


def sa_parts(beta, Q, V, x0, ts, rtol, atol):
    """A SelfAttention solve from raw arrays. V goes through the constructor (its converter
    check); beta and Q are swapped in with tree_at, which skips converters, as a field passed
    around by a training loop does, so only solve's own checks see them."""
    field = tf.SelfAttention(1.0, Q=EYE, V=V)
    field = eqx.tree_at(lambda f: (f.beta, f.Q), field, (beta, Q))
    return tf.solve(field, x0, ts, solver=SOLVER, rtol=rtol, atol=atol, max_steps=64).xs


def kuramoto_parts(coupling, frequencies, theta0, ts):
    field = tf.Kuramoto(1.0, coupling=coupling, frequencies=frequencies)
    return tf.solve(field, theta0, ts, solver=SOLVER, rtol=1e-4, atol=1e-4, max_steps=64).xs


GOOD_SA = dict(
    beta=jnp.asarray(1.0),
    Q=EYE,
    V=-EYE,
    x0=X,
    ts=TS,
    rtol=jnp.asarray(1e-4),
    atol=jnp.asarray(1e-4),
)
GOOD_K = dict(
    coupling=jnp.asarray(1.0), frequencies=jnp.array([0.1, 0.0, -0.1]), theta0=THETA, ts=TS
)

# (argument, bad value, the message the error must contain). The messages name the argument
# (under solve a field leaf is `field.<name>`; the converter names it `<name>`).
SA_CASES = [
    # Any finite real β is valid (β < 0: the repulsive softmax); NaN and inf are refused.
    ("beta", jnp.asarray(jnp.nan), r"beta` has non-finite entries.*any sign"),
    ("beta", jnp.asarray(jnp.inf), r"beta` has non-finite entries.*any sign"),
    ("Q", EYE.at[0, 1].set(jnp.nan), r"`field\.Q` has non-finite entries"),
    ("V", EYE.at[1, 1].set(jnp.inf), r"V` has non-finite entries"),
    ("x0", X.at[0, 0].set(jnp.nan), r"`x0` has non-finite entries"),
    ("x0", 2 * X, r"`x0` must be points on the unit sphere"),
    ("ts", TS.at[1].set(jnp.inf), r"`ts` has non-finite entries"),
    ("ts", TS.at[0].set(jnp.nan), r"`ts` has non-finite entries"),
    ("ts", TS[::-1], r"`ts` must be strictly increasing"),
    ("rtol", jnp.asarray(-1e-4), r"`rtol` must be finite and > 0"),
    ("rtol", jnp.asarray(jnp.nan), r"`rtol` must be finite and > 0"),
    ("atol", jnp.asarray(0.0), r"`atol` must be finite and > 0"),
]
K_CASES = [
    ("coupling", jnp.asarray(jnp.nan), r"coupling` has non-finite entries"),
    ("frequencies", jnp.array([0.1, jnp.inf, 0.0]), r"frequencies` has non-finite entries"),
    ("theta0", THETA.at[2].set(jnp.nan), r"`x0` has non-finite entries"),
    ("ts", TS.at[1].set(jnp.nan), r"`ts` has non-finite entries"),
]


# (the solve from raw arrays, its valid arguments, argument, bad value, message), for the
# sphere field (SA) and the angle field (Kuramoto).
CASES = [(sa_parts, GOOD_SA, *case) for case in SA_CASES] + [
    (kuramoto_parts, GOOD_K, *case) for case in K_CASES
]
CASE_IDS = [f"SA-{case[0]}-{i}" for i, case in enumerate(SA_CASES)] + [
    f"Kuramoto-{case[0]}-{i}" for i, case in enumerate(K_CASES)
]


@functools.cache
def compiled(parts, batched: bool):
    """One compiled function per (solve, batched), shared by every case."""
    return jax.jit(jax.vmap(parts) if batched else parts)


def _batch(good: dict, name: str, bad) -> dict:
    """A batch of two inputs, the second one bad in `name`."""
    batch = {key: jnp.stack([value, value]) for key, value in good.items()}
    batch[name] = jnp.stack([good[name], bad])
    return batch


def _concrete(parts, good, name, bad):
    """The same call without any tracing, so values are checked in Python."""
    return parts(**{**good, name: bad})


# --- every check, concrete, under jit and under vmap ------------------------------------


@pytest.mark.parametrize("parts, good, name, bad, message", CASES, ids=CASE_IDS)
def test_check_concrete(parts, good, name, bad, message):
    with pytest.raises(ValueError, match=message):
        _concrete(parts, good, name, bad)


@pytest.mark.parametrize("parts, good, name, bad, message", CASES, ids=CASE_IDS)
def test_check_under_jit(parts, good, name, bad, message):
    run = compiled(parts, batched=False)
    with raises_at_run_time(message):
        jax.block_until_ready(run(**{**good, name: bad}))


@pytest.mark.parametrize("parts, good, name, bad, message", CASES, ids=CASE_IDS)
def test_check_under_vmap(parts, good, name, bad, message):
    """One bad entry in a batch of two fails the whole batch, naming the argument."""
    run = compiled(parts, batched=True)
    with raises_at_run_time(message):
        jax.block_until_ready(run(**_batch(good, name, bad)))


def test_valid_solve_gives_the_unchecked_numbers():
    """Positive control: the checks pass valid input through unchanged. The jitted, checked
    solve equals diffrax driven by the private, unchecked `_solve`, and each entry of the
    vmapped batch equals the single solve."""
    field = tf.SelfAttention(1.0, Q=EYE, V=-EYE)
    unchecked = _solve(
        field,
        X,
        TS,
        tf.Renormalized(SOLVER),
        None,
        (jnp.asarray(1e-4), jnp.asarray(1e-4)),
        64,
        diffrax.RecursiveCheckpointAdjoint(),
        None,
        None,
        None,
        True,
        diffrax.NoProgressMeter(),
        None,  # noise
        None,  # key
    ).xs
    checked = compiled(sa_parts, batched=False)(**GOOD_SA)
    np.testing.assert_allclose(checked, unchecked, rtol=1e-13, atol=1e-13)
    assert not np.allclose(checked[-1], X, atol=1e-3)  # the solve did move the tokens
    batch = compiled(sa_parts, batched=True)(**_batch(GOOD_SA, "beta", jnp.asarray(1.0)))
    np.testing.assert_allclose(batch[0], unchecked, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(batch[1], unchecked, rtol=1e-13, atol=1e-13)


def test_traced_tolerances_under_vmap_take_effect():
    """Checked tolerances still reach the controller: a batch over rtol gives different step
    counts for different tolerances, and the loose one matches its own single solve."""
    field = tf.SelfAttention(1.0)

    @jax.jit
    @jax.vmap
    def steps(rtol):
        return tf.solve(field, X, jnp.array([0.0, 3.0]), rtol=rtol, atol=rtol).stats["num_steps"]

    loose, tight = steps(jnp.array([1e-2, 1e-8]))
    assert loose < tight
    with raises_at_run_time(r"`rtol` must be finite and > 0"):
        jax.block_until_ready(steps(jnp.array([1e-2, -1.0])))


def test_field_called_directly_under_jit_checks_beta():
    """The converter's check lives in the field's β, so it fires wherever the field is used
    under jit or vmap, not only inside `solve`."""
    velocity = jax.jit(lambda beta: tf.SelfAttention(beta)(0.0, X))
    np.testing.assert_allclose(velocity(1.0), tf.SelfAttention(1.0)(0.0, X), atol=1e-14)
    for bad in (jnp.inf, jnp.nan):
        with raises_at_run_time(r"`beta` has non-finite entries"):
            jax.block_until_ready(velocity(bad))
    batched = jax.vmap(lambda beta: tf.SelfAttention(beta)(0.0, X))
    with raises_at_run_time(r"`beta` has non-finite entries"):
        jax.block_until_ready(batched(jnp.array([1.0, 2.0, jnp.nan])))
    # β < 0 (repulsive softmax) passes, under jit and vmap alike.
    np.testing.assert_allclose(velocity(-0.5), tf.SelfAttention(-0.5)(0.0, X), atol=1e-14)
    np.testing.assert_allclose(
        batched(jnp.array([1.0, -1.0]))[1], tf.SelfAttention(-1.0)(0.0, X), atol=1e-14
    )


def test_concrete_field_leaves_are_checked_by_solve():
    """A field edited with tree_at skips its converters; solve still refuses it, naming the
    leaf as `field.<name>`."""
    field = tf.SelfAttention(1.0, V=EYE)
    with pytest.raises(ValueError, match=r"`field\.beta` has non-finite entries.*any sign"):
        tf.solve(eqx.tree_at(lambda f: f.beta, field, jnp.asarray(jnp.inf)), X, TS)
    with pytest.raises(ValueError, match=r"`field\.V` has non-finite entries"):
        tf.solve(eqx.tree_at(lambda f: f.V, field, EYE * jnp.nan), X, TS)


# --- angle field (Kuramoto) ----------------------------------------------------------------


def test_valid_kuramoto_solve_matches_across_jit_and_vmap():
    concrete = kuramoto_parts(**GOOD_K)
    np.testing.assert_allclose(compiled(kuramoto_parts, False)(**GOOD_K), concrete, rtol=1e-13)
    batch = compiled(kuramoto_parts, True)(**_batch(GOOD_K, "coupling", jnp.asarray(1.0)))
    np.testing.assert_allclose(batch[1], concrete, rtol=1e-13)
    assert not np.allclose(concrete[-1], THETA, atol=1e-3)


# --- energies ------------------------------------------------------------------------------

ENERGIES = {
    "energy": lambda beta: tf.energy(X, beta),
    "energy_rescaled": lambda beta: tf.energy(X, beta, rescaled=True, shifted=True),
    "modified_metric_energy": lambda beta: tf.modified_metric_energy(X, beta, -EYE),
    "torus_energy": lambda beta: tf.torus_energy(THETA, beta),
}
BAD_BETAS = [float("nan"), float("inf")]  # β < 0 is valid (repulsive softmax)


@pytest.mark.parametrize("bad", BAD_BETAS)
@pytest.mark.parametrize("name", ENERGIES)
def test_energy_refuses_bad_beta_concrete(name, bad):
    with pytest.raises(ValueError, match=r"`beta` has non-finite entries"):
        ENERGIES[name](bad)


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_refuses_bad_beta_under_jit_and_vmap(name):
    fn = ENERGIES[name]
    jitted, batched = jax.jit(fn), jax.vmap(fn)
    good = jnp.array([-1.5, 2.0])
    np.testing.assert_allclose(batched(good), [fn(-1.5), fn(2.0)], rtol=1e-13)
    np.testing.assert_allclose(jitted(2.0), fn(2.0), rtol=1e-13)
    for bad in BAD_BETAS:
        with raises_at_run_time(r"`beta` has non-finite entries"):
            jax.block_until_ready(jitted(bad))
        with raises_at_run_time(r"`beta` has non-finite entries"):
            jax.block_until_ready(batched(good.at[1].set(bad)))


# --- observables ---------------------------------------------------------------------------

OBSERVABLES = {
    "gram": tf.gram,
    "clustered_fraction": tf.clustered_fraction,
    "count_clusters": tf.count_clusters,
    "cluster_labels": tf.cluster_labels,
    "cluster_sizes": tf.cluster_sizes,
    "inner_product_histogram": lambda x: tf.inner_product_histogram(x, 4),
    "order_parameter": tf.order_parameter,
    "min_projection": lambda x: tf.min_projection(x, jnp.array([1.0, 0.0])),
}
OFF_SPHERE = X.at[1].multiply(1.1)  # one token 10% too long


@pytest.mark.parametrize("name", OBSERVABLES)
def test_observable_refuses_points_off_the_sphere_concrete(name):
    with pytest.raises(ValueError, match=r"unit sphere.*maximum deviation of 0\.1.*normalize"):
        OBSERVABLES[name](OFF_SPHERE)


@pytest.mark.parametrize("name", OBSERVABLES)
def test_observable_refuses_points_off_the_sphere_under_jit_and_vmap(name):
    fn = OBSERVABLES[name]
    jitted, batched = jax.jit(fn), jax.vmap(fn)
    np.testing.assert_allclose(jitted(X), fn(X), rtol=1e-13)  # positive control
    np.testing.assert_allclose(batched(jnp.stack([X, X]))[1], fn(X), rtol=1e-13)
    with raises_at_run_time(r"must be points on the unit sphere"):
        jax.block_until_ready(jitted(OFF_SPHERE))
    with raises_at_run_time(r"must be points on the unit sphere"):
        jax.block_until_ready(batched(jnp.stack([X, OFF_SPHERE])))


def test_observable_accepts_rounding_and_normalized_points():
    """The tolerance is sqrt(eps): float32 rounding passes, and tf.normalize is the fix."""
    x32 = X.astype(jnp.float32) * (1 + 1e-6)
    assert float(tf.clustered_fraction(x32, 1.0)) == pytest.approx(
        float(tf.clustered_fraction(X, 1.0))
    )
    np.testing.assert_allclose(tf.gram(tf.normalize(OFF_SPHERE)), tf.gram(X), atol=1e-14)
