"""`solve_batch`: the lean batched Tsit5/Bosh3 loop against exact solutions and diffrax."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import theory

TS = jnp.linspace(0.0, 4.0, 9)


def _starts(seed, batch, n, d, dtype=jnp.float64):
    x = np.random.default_rng(seed).standard_normal((batch, n, d))
    return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype)


def _fields(betas, dtype=jnp.float64):
    return eqx.filter_vmap(tf.SelfAttention)(jnp.asarray(betas, dtype))


@eqx.filter_jit
def _lean(betas, x0s, ts, tol, save="interpolate", method="tsit5", lanes=None):
    return tf.solve_batch(
        _fields(betas, x0s.dtype), x0s, ts, batched_field=True, rtol=tol, atol=tol,
        save=save, method=method, lanes=lanes,
    )  # fmt: skip


# float64 tests share one shape (2 systems, n = d = 3) so that they share compiled programs;
# tolerances and β are traced.
@jax.jit
def _diffrax(betas, x0s, tol):
    return jax.vmap(lambda b, x: tf.solve(tf.SelfAttention(b), x, TS, rtol=tol, atol=tol))(
        betas, x0s
    )


def test_exact_equiangular_solution_float64():
    # n = d = 3 tokens started orthonormal stay equiangular with cosine γ_β(t) (6.9).
    betas = jnp.asarray([1.0, 4.0])
    x0s = jnp.broadcast_to(jnp.eye(3), (2, 3, 3))
    out = _lean(betas, x0s, TS, jnp.asarray(1e-10))  # traced: one program for all tolerances
    gram = jnp.einsum("btid,btjd->btij", out.xs, out.xs)
    off = ~np.eye(3, dtype=bool)
    for b, beta in enumerate([1.0, 4.0]):
        gamma = np.asarray(theory.equiangular_cosine(np.asarray(TS), 3, beta, "SA"))
        error = np.max(np.abs(np.asarray(gram[b])[:, off] - gamma[:, None]))
        assert error < 1e-8, (beta, error)
    assert bool(out.succeeded.all())


@pytest.mark.parametrize("betas", [(0.5, 6.0), (-1.0, -3.0)])
def test_matches_diffrax_tsit5_step_for_step(betas):
    # Attractive and repulsive β.
    betas = jnp.asarray(betas)
    x0s = _starts(0, 2, 3, 3)
    tol = jnp.asarray(1e-6)
    out = _lean(betas, x0s, TS, tol)
    ref = _diffrax(betas, x0s, tol)
    # Same method, controller, first step and dense output: agreement far below the
    # tolerance, and the same accepted and rejected steps.
    assert float(jnp.max(jnp.abs(out.xs - ref.xs))) < 1e-9
    assert jnp.array_equal(out.num_steps, ref.stats["num_steps"])
    assert jnp.array_equal(out.num_accepted_steps, ref.stats["num_accepted_steps"])
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(out.xs, axis=-1) - 1))) < 1e-14


def test_work_queue_equals_lock_stepped_batch_and_diffrax():
    # Six systems of very different stiffness (β from -3 to 20) through two lanes: each lane
    # takes the next system when its own reaches t1. Every system's steps and saves are those
    # of the lock-stepped batch (six lanes) bitwise, and diffrax's step for step; the two
    # lanes compute fewer masked steps than six lanes running the slowest system's steps.
    betas = jnp.asarray([0.5, 20.0, -3.0, 6.0, 1.0, -1.0])
    x0s = _starts(7, 6, 3, 3)
    tol = jnp.asarray(1e-6)
    queued = _lean(betas, x0s, TS, tol, lanes=2)
    locked = _lean(betas, x0s, TS, tol, lanes=6)
    assert bool(queued.succeeded.all())
    assert jnp.array_equal(queued.xs, locked.xs)
    for key in ("num_steps", "num_accepted_steps", "num_rejected_steps"):
        assert jnp.array_equal(getattr(queued, key), getattr(locked, key)), key
    steps = np.asarray(queued.num_steps)
    assert len(set(steps.tolist())) >= 3  # heterogeneous: the queue has something to balance
    assert int(locked.num_lane_steps) == 6 * steps.max()
    # Two lanes: at least the useful steps, at most one longest system beyond a balanced split.
    assert steps.sum() <= int(queued.num_lane_steps) <= steps.sum() + 2 * steps.max()
    assert int(queued.num_lane_steps) < int(locked.num_lane_steps)
    for pair in range(3):  # the diffrax reference in the shape the tests above compiled
        part = slice(2 * pair, 2 * pair + 2)
        ref = _diffrax(betas[part], x0s[part], tol)
        assert float(jnp.max(jnp.abs(queued.xs[part] - ref.xs))) < 1e-9
        assert jnp.array_equal(queued.num_steps[part], ref.stats["num_steps"])


def test_bosh3_and_clip_agree_with_diffrax_at_tolerance():
    betas = jnp.asarray([1.0, 3.0])
    x0s = _starts(1, 2, 3, 3)
    tol = jnp.asarray(1e-7)
    ref = _diffrax(betas, x0s, tol).xs
    runs = {}
    for save, method in (("clip", "tsit5"), ("interpolate", "bosh3")):
        out = runs[save] = _lean(betas, x0s, TS, tol, save, method)
        assert float(jnp.max(jnp.abs(out.xs - ref))) < 1e-5, (save, method)
        # On the sphere after every step, and the state at ts[0] is the start.
        assert float(jnp.max(jnp.abs(jnp.linalg.norm(out.xs, axis=-1) - 1))) < 1e-14
        np.testing.assert_allclose(out.xs[:, 0], x0s, rtol=0, atol=1e-15)
    # Clipping ends a step on every save time: at least one accepted step per interval, and
    # more steps than with interpolation.
    dense = _lean(betas, x0s, TS, tol)
    assert bool(jnp.all(runs["clip"].num_accepted_steps >= TS.shape[0] - 1))
    assert bool(jnp.all(runs["clip"].num_steps > dense.num_steps))


def test_very_different_betas_and_observe_float32():
    # β = 0.1, 200 and 5 in one batch: each system takes its own steps, the finished ones
    # idle, and each equals its solve in a batch of copies of itself.
    betas = jnp.asarray([0.1, 200.0, 5.0], jnp.float32)
    x0s = _starts(2, 3, 8, 2, jnp.float32)
    ts = TS.astype(jnp.float32)

    def observe(x):
        return {"fraction": tf.clustered_fraction(x, 1e-3), "labels": tf.cluster_labels(x, 1e-3)}

    run = eqx.filter_jit(
        lambda b, x: tf.solve_batch(
            _fields(b, jnp.float32), x, ts, batched_field=True, rtol=1e-5, atol=1e-5,
            observe=observe,
        )
    )  # fmt: skip
    out = run(betas, x0s)
    assert out.xs is None and jnp.issubdtype(out.observed["labels"].dtype, jnp.integer)
    assert out.observed["fraction"].shape == (3, ts.shape[0])
    assert bool(out.succeeded.all())
    assert len(set(np.asarray(out.num_steps).tolist())) >= 2  # lanes take their own steps
    for b in range(3):
        alone = run(betas[jnp.asarray([b] * 3)], x0s[jnp.asarray([b] * 3)])
        assert int(alone.num_steps[0]) == int(out.num_steps[b])
        for key in ("fraction", "labels"):
            assert jnp.array_equal(alone.observed[key][0], out.observed[key][b])
    again = run(betas, x0s)  # deterministic
    assert jnp.array_equal(again.observed["fraction"], out.observed["fraction"])


def test_shared_field_and_max_steps():
    x0s = _starts(5, 2, 3, 3)
    short = tf.solve_batch(tf.SelfAttention(1.0), x0s, TS, max_steps=3, throw=False)
    assert not bool(short.succeeded.any())
    assert jnp.array_equal(short.num_steps, jnp.asarray([3, 3], jnp.int32))
    with pytest.raises(Exception, match="max_steps"):
        tf.solve_batch(tf.SelfAttention(1.0), x0s, TS, max_steps=3).num_steps.block_until_ready()


def test_refuses_unsupported_input():
    x0s = _starts(6, 2, 4, 2)
    sa = tf.SelfAttention(1.0)
    cases = [
        (dict(field=tf.PreLN(sa)), "sphere fields"),
        (dict(field=tf.Kuramoto(1.0)), "sphere fields"),
        (dict(method="dopri5"), "method"),
        (dict(save="nearest"), "save"),
        (dict(x0s=x0s[0]), r"\(B, n, d\)"),
        (dict(x0s=2 * x0s), "unit sphere"),
        (dict(rtol=0.0), "rtol"),
        (dict(max_steps=0), "max_steps"),
        (dict(lanes=0), "lanes"),
        (dict(field=_fields([1.0, 2.0, 3.0]), batched_field=True), "batch size 2"),
        (dict(ts=jnp.asarray([0.0, 2.0, 1.0])), "increasing"),
        (dict(field=tf.SelfAttention(1.0, Q=jnp.eye(2)[None].repeat(2, 0), layer_duration=1.0)),
         "layer boundaries"),
    ]  # fmt: skip
    for change, message in cases:
        kwargs = dict(field=sa, x0s=x0s, ts=TS) | change
        with pytest.raises(ValueError, match=message):
            tf.solve_batch(kwargs.pop("field"), kwargs.pop("x0s"), kwargs.pop("ts"), **kwargs)
