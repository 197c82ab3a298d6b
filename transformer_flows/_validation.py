"""Shared checks that give errors naming the argument, the value and the fix.

Every check has two tiers (STYLE.md §0.4): a `ValueError` now when the value is concrete, and
`eqx.error_if` when it is traced (under `jax.jit`/`jax.vmap`). `eqx.error_if` only fires when
its *returned* array is used downstream (otherwise XLA removes the check), so every check
returns its input and callers must carry on with what it returns.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def is_concrete(*values) -> bool:
    """True when no leaf is a tracer, i.e. values can be checked in Python right now."""
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _refuse_complex(dtype, name: str) -> None:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"`{name}` must be real, got dtype {jnp.dtype(dtype).name}; pass the real part "
            f"(`jnp.real({name})`) or split real and imaginary parts into separate arrays."
        )


def as_float_array(value, name: str) -> Array:
    """Convert to a real floating JAX array (integers become the default float), refusing
    non-numeric and complex input with a named error. Accepts array-likes (lists, numpy)."""
    if isinstance(value, jax.core.Tracer):
        _refuse_complex(value.dtype, name)
        return value if jnp.issubdtype(value.dtype, jnp.floating) else value.astype(float)
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` must be an array of numbers, got {type(value).__name__} {value!r:.80}."
        ) from err
    _refuse_complex(array.dtype, name)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    return array


def optional_float_array(name: str):
    """Converter for optional weight matrices: None stays None (meaning the identity); else a
    real float array whose entries are checked finite (now, or at run time when traced)."""

    def convert(value):
        return None if value is None else check_finite(as_float_array(value, name), name)

    return convert


def check_finite(value: Array, name: str, fix: str = "") -> Array:
    """Raise (now, or at run time under jit) if `value` has NaN or inf entries. Use the
    returned array: under jit the check lives only in it."""
    message = f"`{name}` has non-finite entries (NaN or inf). {fix}".strip()
    if is_concrete(value):
        if not bool(np.all(np.isfinite(np.asarray(value)))):
            raise ValueError(message)
        return value
    return eqx.error_if(value, ~jnp.all(jnp.isfinite(value)), message)


def check_nonnegative(value: Array, name: str, meaning: str = "") -> Array:
    """Raise (now, or at run time under jit/vmap) unless every entry is finite and >= 0.
    NaN fails too (every comparison with NaN is false)."""
    what = f" ({meaning})" if meaning else ""
    if is_concrete(value):
        array = np.asarray(value)
        if not bool(np.all(np.isfinite(array) & (array >= 0))):
            shown = float(array) if array.ndim == 0 else array
            raise ValueError(f"`{name}` must be finite and >= 0{what}, got {shown}.")
        return value
    return eqx.error_if(
        value,
        ~jnp.all(jnp.isfinite(value) & (value >= 0)),
        f"`{name}` must be finite and >= 0{what}, got a negative, NaN or inf value (under "
        "jit/vmap: check every entry of the batch).",
    )


def check_positive(value: Array, name: str) -> Array:
    """Raise (now, or at run time under jit/vmap) unless every entry is finite and > 0."""
    if is_concrete(value):
        array = np.asarray(value)
        if not bool(np.all(np.isfinite(array) & (array > 0))):
            shown = float(array) if array.ndim == 0 else array
            raise ValueError(f"`{name}` must be finite and > 0, got {shown}.")
        return value
    return eqx.error_if(
        value,
        ~jnp.all(jnp.isfinite(value) & (value > 0)),
        f"`{name}` must be finite and > 0, got a value <= 0, NaN or inf (under jit/vmap: "
        "check every entry of the batch).",
    )


def sphere_tolerance(dtype) -> float:
    """How far from |x_i| = 1 a point may be: sqrt(eps), loose enough for rounding."""
    return float(np.sqrt(jnp.finfo(dtype).eps))


def check_on_sphere(x: Array, name: str = "x") -> Array:
    """Raise (now, or at run time under jit/vmap) unless every row of `x` has norm 1 within
    `sphere_tolerance`. One reduction, so cheap enough for every observable call."""
    tolerance = sphere_tolerance(x.dtype)
    fix = f"normalise it first with `transformer_flows.normalize({name})`"
    if is_concrete(x):
        array = np.asarray(x)
        if array.size == 0:
            return x
        deviation = float(np.max(np.abs(np.linalg.norm(array, axis=-1) - 1)))
        if not deviation <= tolerance:  # NaN fails too
            raise ValueError(
                f"`{name}` must be points on the unit sphere (| |x_i| - 1 | <= {tolerance:.1e}), "
                f"got a maximum deviation of {deviation:.3g}; {fix}."
            )
        return x
    deviation = jnp.max(jnp.abs(jnp.linalg.norm(x, axis=-1) - 1), initial=0.0)
    return eqx.error_if(
        x,
        ~(deviation <= tolerance),
        f"`{name}` must be points on the unit sphere (| |x_i| - 1 | <= {tolerance:.1e}); {fix}.",
    )


def check_condition(value, bad, message: str):
    """Raise ValueError now if `bad` is concrete and true, else attach `eqx.error_if`."""
    if is_concrete(bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
        return value
    return eqx.error_if(value, bad, message)
