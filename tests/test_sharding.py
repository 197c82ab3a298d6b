"""Sharded = unsharded, on 4 simulated CPU devices.

XLA_FLAGS must be set before jax initialises, so the checks run in a fresh interpreter: this
file executed as a script (`python tests/test_sharding.py`) is the worker.
"""

import os
import subprocess
import sys

import pytest

DEVICES = 4


def test_sharded_runs_match_unsharded():
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all sharding checks passed" in done.stdout


def test_bad_arguments_are_named():
    import jax.numpy as jnp

    import transformer_flows as tf

    with pytest.raises(ValueError, match="order"):
        tf.sharded_map(lambda b: b, jnp.ones(3), order=jnp.ones(2))
    with pytest.raises(ValueError, match="chunk_size"):
        tf.sharded_map(lambda b: b, jnp.ones(3), chunk_size=0)


def _worker():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    import transformer_flows as tf

    assert jax.device_count() == DEVICES, jax.devices()
    key = jax.random.key(0)
    keys = jax.random.split(key, 8)
    tol = dict(rtol=1e-9, atol=1e-9)

    # 1. A sweep over β × starts: 6 lanes (not a multiple of 4: padded), sorted by β, chunks.
    betas = jnp.array([3.0, 0.5, 2.0, 0.1, 1.0, 4.0])
    starts = jax.vmap(lambda k: tf.sample_sphere(k, 6, 3))(keys[:6])
    ts = jnp.linspace(0.0, 2.0, 3)

    def final(beta, x0):
        return tf.solve(tf.SelfAttention(beta), x0, ts, **tol).xs[-1]

    expected = jax.vmap(final)(betas, starts)
    for chunk in (None, 1):
        got = tf.sharded_map(final, betas, starts, order=betas, chunk_size=chunk)
        assert float(jnp.max(jnp.abs(got - expected))) < 1e-12, chunk
    got = jax.jit(lambda b, s: tf.sharded_map(final, b, s))(betas, starts)
    assert float(jnp.max(jnp.abs(got - expected))) < 1e-12

    # 2. One system with its tokens over the devices (blockwise inside each device).
    mesh = tf.device_mesh("tokens")
    n, d = 24, 4
    x0 = tf.sample_sphere(keys[6], n, d)
    Q, K, V = tf.random_weights(keys[7], d)
    for field in (
        tf.SelfAttention(1.5, Q, K, V, attention=tf.BlockwiseAttention(5)),
        tf.UnnormalizedSelfAttention(1.5, Q, K, V, time_rescaled=True),
    ):
        sharded = tf.TokenSharded(field, mesh)
        xs = tf.shard_tokens(x0, mesh)
        velocity = jax.jit(lambda x, f=sharded: f(0.0, x))(xs)
        assert len(velocity.sharding.device_set) == DEVICES
        assert float(jnp.max(jnp.abs(velocity - field(0.0, x0)))) < 1e-12
        solved = tf.solve(sharded, xs, ts, **tol).xs
        assert float(jnp.max(jnp.abs(solved - tf.solve(field, x0, ts, **tol).xs))) < 1e-10
    try:
        tf.solve(tf.TokenSharded(tf.SelfAttention(1.0), mesh), x0[:5], ts)
    except ValueError as error:
        assert "divisible" in str(error)
    else:
        raise AssertionError("5 tokens on 4 devices was accepted")
    print("all sharding checks passed")


if __name__ == "__main__":
    _worker()
