"""The one-pass attention kernel on CPU: an XLA FFI custom call built from the library's own
C++ source (`_attention_kernel.cc`, shipped in the wheel) at first use.

For unmasked dense attention, `one_pass_mix(q, k, v, log_shift, normalized)` computes
Σ_j w_ij v_j with w the softmax of s_ij = <q_i, k_j> (SA, online softmax: one pass over each
row of scores for the running maximum, the rescaled sum and the weighted sum together) or
e^{s_ij - log_shift}/nk (USA), on CPU through the kernel and elsewhere (GPU, or when the
kernel is unavailable or turned off) through the pure-JAX formula. Derivatives always come
from the pure-JAX formula (`jax.custom_jvp`), so gradients and fits are unchanged.

Building: `g++` (or $CXX) compiles the source against `jax.ffi.include_dir()` into
`$XDG_CACHE_HOME/transformer-flows/kernels/` (default `~/.cache/...`), one file per hash of
the source, the compiler flags, the jaxlib version and the machine type, so an upgrade
rebuilds; written to a temporary file and renamed, so two processes never load a
half-written one (about 3 s of CPU, once). No network is used. When
the build or the load fails, one warning line is issued and the pure-JAX path is used; so it
is without a compiler, silently unless the kernel was asked for explicitly.

Turning it on or off: the environment variable TRANSFORMER_FLOWS_ATTENTION_KERNEL ("1" on,
"0" off; unset: on, `DEFAULT_ON`) or `use_attention_kernel(True/False)` (which wins over the
variable, and clears JAX's caches so that jitted functions trace again). The choice is made
when a function is traced.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
from jaxtyping import Array, Float

from ._scores import _normalise_scores, inner_products

ENV = "TRANSFORMER_FLOWS_ATTENTION_KERNEL"
# On by default: on the Fig. 3(a) workload (one core, float32) an evaluation is 1.9-2.2x and
# a whole solve 1.30-1.39x faster, at the same accuracy (benchmarks/bench_attention_kernel.py).
DEFAULT_ON = True
SOURCE = Path(__file__).with_name("_attention_kernel.cc")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno")
TARGETS = {
    jnp.dtype("float32"): "tf_attention_mix_f32",
    jnp.dtype("float64"): "tf_attention_mix_f64",
}
SYMBOLS = {"tf_attention_mix_f32": "TfAttentionMixF32", "tf_attention_mix_f64": "TfAttentionMixF64"}

_choice: bool | None = None  # use_attention_kernel's setting (None: the environment decides)


def use_attention_kernel(on: bool | None) -> None:
    """Turn the CPU attention kernel on (True) or off (False), or hand the choice back to
    TRANSFORMER_FLOWS_ATTENTION_KERNEL (None), for everything traced from now on.

    The library's jitted functions cache their traces, so a change of the setting clears
    JAX's caches (`jax.clear_caches()`): later calls trace and compile again. Programs
    compiled ahead of time (`jax.jit(f).lower(...).compile()`) keep the path they have."""
    global _choice
    if on is not None and not isinstance(on, bool):
        raise ValueError(f"`on` must be True, False or None, got {on!r}.")
    if on != _choice:
        before = kernel_requested()
        _choice = on
        if kernel_requested() != before:
            jax.clear_caches()


def _setting() -> bool | None:
    """True/False if asked for (`use_attention_kernel`, else the environment), None if not."""
    if _choice is not None:
        return _choice
    value = os.environ.get(ENV, "").strip()
    if value == "":
        return None
    return value not in ("0", "false", "False", "off")


def kernel_requested() -> bool:
    """Whether the kernel is to be used (asked for, else `DEFAULT_ON`)."""
    setting = _setting()
    return DEFAULT_ON if setting is None else setting


def kernel_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/transformer-flows/kernels`, or `~/.cache/transformer-flows/kernels`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer-flows" / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _machine() -> bytes:
    return platform.machine().encode()


def _library_path(source: bytes) -> Path:
    digest = hashlib.sha256()
    # The machine type too: a home directory shared by x86-64 and arm64 hosts keeps both.
    for part in (source, " ".join(FLAGS).encode(), jaxlib.__version__.encode(), _machine()):
        digest.update(part)
        digest.update(b"\0")
    return kernel_cache_dir() / f"attention_kernel_{digest.hexdigest()[:20]}.so"


def _build(compiler: str, source: bytes, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it into place (atomic)."""
    # Private to the user: whoever can write here can run code in the process that loads it.
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", partial]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise RuntimeError(lines[0] if lines else f"exit status {result.returncode}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


_registered: set[str] = set()


@functools.cache
def load_kernel(explicit: bool = False) -> bool:
    """Build (once per source, flags and jaxlib version) and register the kernel; True when
    it is ready. Otherwise False, and the pure-JAX path everywhere, with a one-line warning,
    except when no compiler is found and the kernel was not asked for explicitly (`explicit`:
    the environment variable or `use_attention_kernel(True)`): the default then falls back
    silently, since nothing is wrong."""
    import ctypes

    try:
        source = SOURCE.read_bytes()
        target = _library_path(source)
        if not target.exists():
            compiler = _compiler()
            if compiler is None:
                if not explicit:
                    return False
                raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) found")
            _build(compiler, source, target)
        library = ctypes.cdll.LoadLibrary(str(target))
        for name, symbol in SYMBOLS.items():
            if name not in _registered:
                capsule = jax.ffi.pycapsule(getattr(library, symbol))
                jax.ffi.register_ffi_target(name, capsule, platform="cpu")
                _registered.add(name)
    except Exception as error:  # noqa: BLE001 -- any failure means: use the pure path
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        warnings.warn(
            f"transformer_flows: the CPU attention kernel is unavailable ({message}); using "
            f"the pure-JAX attention (set {ENV}=0 to silence this).",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def pure_mix(
    queries: Float[Array, "nq k"],
    keys: Float[Array, "nk k"],
    values: Float[Array, "nk d"],
    log_shift: Float[Array, ""],
    normalized: bool,
) -> Float[Array, "nq d"]:
    """The pure-JAX formula: softmax(scores) @ values, or e^{scores - log_shift}/nk @ values."""
    return _normalise_scores(inner_products(queries, keys), normalized, log_shift) @ values


def _kernel_mix(queries, keys, values, log_shift, normalized: bool):
    target = TARGETS[jnp.dtype(queries.dtype)]
    call = jax.ffi.ffi_call(
        target,
        jax.ShapeDtypeStruct(queries.shape[:-1] + values.shape[-1:], values.dtype),
        vmap_method="broadcast_all",
    )
    return call(queries, keys, values, log_shift, normalized=int(normalized))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _one_pass(queries, keys, values, log_shift, normalized):
    return jax.lax.platform_dependent(
        queries,
        keys,
        values,
        log_shift,
        cpu=functools.partial(_kernel_mix, normalized=normalized),
        default=functools.partial(pure_mix, normalized=normalized),
    )


@_one_pass.defjvp
def _one_pass_jvp(normalized, primals, tangents):
    return jax.jvp(functools.partial(pure_mix, normalized=normalized), primals, tangents)


def kernel_applies(queries: Array, keys: Array, values: Array) -> bool:
    """Whether `one_pass_mix` would use the kernel for these arrays (traced-time decision)."""
    dtypes = {jnp.dtype(a.dtype) for a in (queries, keys, values)}
    return (
        len(dtypes) == 1
        and dtypes.pop() in TARGETS
        and keys.shape[0] >= 1
        and queries.shape[-1] >= 1
        and jax.default_backend() == "cpu"
        and kernel_requested()
        and load_kernel(explicit=_setting() is True)
    )


def one_pass_mix(
    queries: Float[Array, "nq k"],
    keys: Float[Array, "nk k"],
    values: Float[Array, "nk d"],
    log_shift: Float[Array, ""] | float,
    normalized: bool,
) -> Float[Array, "nq d"]:
    """Σ_j w_ij values_j of unmasked dense attention (queries already β-scaled): through the
    CPU kernel where it applies (`kernel_applies`), else the pure-JAX formula."""
    log_shift = jnp.asarray(log_shift, queries.dtype)
    if not kernel_applies(queries, keys, values):
        return pure_mix(queries, keys, values, log_shift, normalized)
    return _one_pass(queries, keys, values, log_shift, normalized)
