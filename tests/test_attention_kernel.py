"""The one-pass CPU attention kernel (transformer_flows/_attention_kernel.cc): the same numbers
as the pure-JAX attention to rounding, float32 and float64, batch dims, the pure formula's
derivatives, and the pure-JAX fallback when no compiler is there or the build fails."""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import _attention_kernel as kernel

needs_compiler = pytest.mark.skipif(
    kernel._compiler() is None, reason="no C++ compiler: the kernel falls back to pure JAX"
)


@pytest.fixture
def kernel_on(monkeypatch):
    """The kernel asked for explicitly, for functions traced in the test (no cache clearing:
    the tests below trace afresh)."""
    monkeypatch.setattr(kernel, "_choice", True)
    assert kernel.load_kernel(explicit=True)


def reference(q, k, v, shift, normalized):
    """float64 numpy, log-sum-exp stable."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("...ic,...jc->...ij", q, k)
    if normalized:
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
    else:
        weights = np.exp(scores - np.asarray(shift, np.float64)[..., None, None])
        weights /= scores.shape[-1]
    return weights @ v


def unit_rows(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# One compiled program per (dtype, normalized, shapes): the kernel and the pure path on a
# batch of 4 systems whose β run from 1 to 1e3 (so scores up to 1e3, no overflow).
BETAS = np.array([1.0, 9.0, 100.0, 1e3])
SHAPES = [(1, 2, 2), (32, 2, 2), (300, 5, 3)]  # n = 1; the workload's n, d; > one key chunk


@jax.jit
def _both(q, k, v, shift):
    out = {}
    for normalized in (True, False):
        kernel_path = jax.vmap(lambda a, b, c, s: kernel._one_pass(a, b, c, s, normalized))
        pure_path = jax.vmap(lambda a, b, c, s: kernel.pure_mix(a, b, c, s, normalized))
        out[normalized] = (kernel_path(q, k, v, shift), pure_path(q, k, v, shift))
    return out


@needs_compiler
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_pure_and_reference(kernel_on, dtype, shape):
    n, k, d = shape
    rng = np.random.default_rng(n)
    x = unit_rows(rng, BETAS.size, n, k)
    q = jnp.asarray(BETAS[:, None, None] * x, dtype)
    keys, values = (
        jnp.asarray(x, dtype),
        jnp.asarray(rng.standard_normal((BETAS.size, n, d)), dtype),
    )
    shift = jnp.asarray(BETAS, dtype)  # USA: e^{β<x_i, x_j> - β} <= 1
    eps = float(jnp.finfo(dtype).eps)
    for normalized, (fast, pure) in _both(q, keys, values, shift).items():
        assert fast.dtype == dtype and fast.shape == (BETAS.size, n, d)
        assert bool(jnp.all(jnp.isfinite(fast)))
        exact = reference(q, keys, values, shift, normalized)
        # A score of size β carries a rounding error ~ β·eps, which the weights inherit.
        bound = 16 * eps * (1 + BETAS)[:, None, None] * np.abs(values).max()
        assert np.all(np.abs(np.asarray(fast, np.float64) - exact) <= bound)
        assert np.all(np.abs(np.asarray(pure, np.float64) - exact) <= bound)
        if n == 1 and normalized:  # one key: softmax weight exactly e^0 / e^0 = 1
            assert np.array_equal(np.asarray(fast), np.asarray(values))


@needs_compiler
def test_large_n_and_nested_batch_dims(kernel_on):
    """n = 2000 (16 key chunks, online rescaling), two vmapped batch axes, float64."""
    rng = np.random.default_rng(1)
    # Keys sorted by their first coordinate and queries near e_1: the scores grow along the
    # keys, so every later chunk raises the running maximum (the rescaling is exercised).
    keys = unit_rows(rng, 2, 2, 2000, 4)
    keys = np.take_along_axis(keys, np.argsort(keys[..., :1], axis=-2), axis=-2)
    x = jnp.asarray(keys)
    q = jnp.asarray(30.0 * unit_rows(rng, 2, 2, 2000, 4) + 90.0 * np.eye(4)[0])
    v = jnp.asarray(rng.standard_normal((2, 2, 2000, 3)))
    shift = jnp.zeros((2, 2))
    fast = jax.jit(jax.vmap(jax.vmap(lambda a, b, c, s: kernel._one_pass(a, b, c, s, True))))(
        q, x, v, shift
    )
    exact = reference(q, x, v, shift, True)
    np.testing.assert_allclose(np.asarray(fast), exact, rtol=0, atol=1e-12 * np.abs(exact).max())


@needs_compiler
def test_derivatives_are_the_pure_formulas(kernel_on):
    rng = np.random.default_rng(2)
    x = jnp.asarray(unit_rows(rng, 6, 3))
    v = jnp.asarray(rng.standard_normal((6, 2)))

    def loss(mix):
        return lambda x, beta: jnp.sum(jnp.sin(mix(beta * x, x, v, jnp.asarray(0.0), True)))

    fast = jax.jit(jax.grad(loss(kernel._one_pass), argnums=(0, 1)))(x, 2.0)
    pure = jax.jit(jax.grad(loss(kernel.pure_mix), argnums=(0, 1)))(x, 2.0)
    for a, b in zip(fast, pure, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@needs_compiler
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_attend_uses_kernel_where_it_applies(kernel_on, monkeypatch, dtype):
    """Multi-head SA and USA through `attend`: the kernel for unmasked dense attention, the
    same numbers as the pure path to rounding; masks keep the pure path."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(unit_rows(rng, 12, 3), dtype)
    Q, K, V = (jnp.asarray(rng.standard_normal((2, 3, 3)), dtype) for _ in range(3))
    beta = jnp.asarray(1.5, dtype)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def attend(normalized, mask=None):
        return tf.attend(
            x, beta, Q, K, V, normalized=normalized, log_shift=beta, mask=mask,
            method=tf.DenseAttention(),
        )  # fmt: skip

    def traced(*args):
        return attend.lower(*args).as_text()

    assert "tf_attention_mix" in traced(True)
    assert "tf_attention_mix" not in traced(True, tf.AttentionMask(causal=True))
    fast = {normalized: attend(normalized) for normalized in (True, False)}
    monkeypatch.setattr(kernel, "_choice", False)
    attend.clear_cache()
    assert "tf_attention_mix" not in traced(True)
    eps = float(jnp.finfo(dtype).eps)
    for normalized in (True, False):
        pure = attend(normalized)
        atol = 64 * eps * float(jnp.max(jnp.abs(pure)))
        np.testing.assert_allclose(fast[normalized], pure, rtol=0, atol=atol)


def test_fallback_without_compiler_or_with_a_failing_build(monkeypatch, tmp_path):
    """A fresh cache and no compiler: one warning when asked for, silence by default; a
    compiler that fails: one warning. Either way the pure-JAX numbers, bitwise."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernel, "_choice", None)
    rng = np.random.default_rng(4)
    x = jnp.asarray(unit_rows(rng, 5, 2))
    pure = kernel.pure_mix(3.0 * x, x, x, jnp.asarray(0.0), True)
    try:
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        kernel.load_kernel.cache_clear()
        assert not kernel.load_kernel(explicit=False)  # the default: no warning
        kernel.load_kernel.cache_clear()
        with pytest.warns(RuntimeWarning, match="kernel is unavailable.*no C\\+\\+ compiler"):
            monkeypatch.setenv(kernel.ENV, "1")
            out = kernel.one_pass_mix(3.0 * x, x, x, 0.0, True)
        assert np.array_equal(np.asarray(out), np.asarray(pure))
        assert "ffi_call" not in str(jax.make_jaxpr(kernel.one_pass_mix, static_argnums=4)(
            3.0 * x, x, x, 0.0, True
        ))  # fmt: skip
        if shutil.which("false") is not None:
            monkeypatch.setenv("CXX", "false")
            kernel.load_kernel.cache_clear()
            with pytest.warns(RuntimeWarning, match="kernel is unavailable"):
                assert not kernel.load_kernel(explicit=True)
        assert not list(tmp_path.rglob("*.so"))  # nothing half-built left behind
        if shutil.which("false") is not None:  # the build made the kernel folder: user-only
            folders = [p for p in tmp_path.rglob("kernels") if p.is_dir()]
            assert folders and all(p.stat().st_mode & 0o077 == 0 for p in folders)
    finally:
        kernel.load_kernel.cache_clear()


def test_switch_and_cache_key(monkeypatch, without_type_checker):
    with pytest.raises(ValueError, match="`on` must be True, False or None"):
        kernel.use_attention_kernel("yes")
    monkeypatch.setattr(kernel, "_choice", None)
    monkeypatch.setenv(kernel.ENV, "0")
    assert not kernel.kernel_requested()
    monkeypatch.setenv(kernel.ENV, "1")
    assert kernel.kernel_requested()
    monkeypatch.delenv(kernel.ENV)
    assert kernel.kernel_requested() == kernel.DEFAULT_ON
    # Another source, machine type or jaxlib is another library file.
    current = kernel._library_path(b"a")
    assert current != kernel._library_path(b"b")
    monkeypatch.setattr(kernel, "_machine", lambda: b"another-architecture")
    assert current != kernel._library_path(b"a")
    monkeypatch.undo()
    monkeypatch.setattr(kernel.jaxlib, "__version__", "0.0.0")
    assert current != kernel._library_path(b"a")


@needs_compiler
def test_threads_do_not_change_the_numbers(kernel_on):
    """A batch large enough for XLA's intra-op threads gives bitwise what each system gives
    alone (each batch element is one thread's, with the same code)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(unit_rows(rng, 64, 64, 2), jnp.float32)
    beta = jnp.asarray(np.linspace(0.5, 9.0, 64), jnp.float32)[:, None, None]
    shift = jnp.zeros(64, jnp.float32)
    mix = jax.jit(lambda q, k, v, s: kernel._one_pass(q, k, v, s, True))
    together = jax.jit(jax.vmap(mix))(beta * x, x, x, shift)
    alone = [mix(beta[b] * x[b], x[b], x[b], shift[b]) for b in range(0, 64, 9)]
    for b, out in zip(range(0, 64, 9), alone, strict=True):
        assert np.array_equal(np.asarray(together[b]), np.asarray(out))
