"""The persistent compilation cache of the command line and the scripts: a second process
loads the programs the first one compiled (run in subprocesses: the cache is process-wide)."""

import os
import subprocess
import sys
import textwrap

import transformer_flows as tf

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    import transformer_flows as tf

    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
    )
    folder = tf.enable_compilation_cache()
    x = tf.sample_sphere(jax.random.key(0), 5, 3)
    tf.solve(tf.SelfAttention(1.0), x, jnp.linspace(0.0, 1.0, 3)).xs.block_until_ready()
    print(folder, len(hits))
    """
)


def _run(env):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    folder, hits = result.stdout.split()
    return folder, int(hits)


def test_second_process_loads_what_the_first_compiled(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "TRANSFORMER_FLOWS_NO_CACHE": ""}
    folder, first_hits = _run(env)
    assert folder == str(tmp_path / "transformer-flows")
    assert first_hits == 0 and any((tmp_path / "transformer-flows").iterdir())
    _, second_hits = _run(env)
    assert second_hits >= 1  # the solve's program came from disk


def test_opt_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_FLOWS_NO_CACHE", "1")
    assert tf.enable_compilation_cache(tmp_path) is None
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tf.default_cache_dir() == tmp_path / "transformer-flows"


NAN_CHECKS_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    import transformer_flows as tf

    tf.enable_compilation_cache(nan_checks=True)

    def one(x):
        trajectory = tf.solve(
            tf.SelfAttention(1.0), x, jnp.linspace(0.0, 1.0, 3), max_steps=64, throw=False,
            observe=lambda y: jnp.sum(y),
        )
        return trajectory.observed, trajectory.succeeded

    program = jax.jit(jax.vmap(one))
    good = tf.sample_sphere(jax.random.key(0), 5, 3)
    x = jnp.stack([good, good.at[0, 0].set(2.0)])  # the second start is off the sphere
    observed, succeeded = program(x)
    print("callback" in program.lower(x).as_text(), *succeeded.tolist(),
          bool(jnp.all(jnp.isfinite(observed[0]))), bool(jnp.any(jnp.isfinite(observed[1]))))
    """
)


def test_nan_checks_leave_no_callback_and_refuse_bad_starts(tmp_path):
    """`nan_checks=True` (the sweeps of `transformer-flows run`, `make demo`): the vmapped
    solve holds no host callback (so JAX can persist it), and an off-sphere start still
    fails its solve (succeeded False, no finite observable) instead of giving a number. As
    when checks raise, a failed check under vmap fails the whole batch (equinox reduces the
    predicate over the batch): the good start is refused with it."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "TRANSFORMER_FLOWS_NO_CACHE": ""}
    env.pop("EQX_ON_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-c", NAN_CHECKS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False", "False", "False"]
