"""Shared checks that give errors naming the argument, the value and the fix."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def is_concrete(*values) -> bool:
    """True when no leaf is a tracer, i.e. values can be checked in Python right now."""
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def as_float_array(value, name: str) -> Array:
    """Convert to a floating JAX array, rejecting non-numeric input with a named error."""
    if isinstance(value, jax.core.Tracer):
        return value if jnp.issubdtype(value.dtype, jnp.inexact) else value.astype(float)
    try:
        array = jnp.asarray(value)
    except TypeError as err:
        raise ValueError(f"`{name}` must be an array of numbers, got {value!r}.") from err
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        array = array.astype(jnp.result_type(float))
    return array


def optional_float_array(name: str):
    """Converter for optional weight matrices: None stays None (meaning the identity)."""

    def convert(value):
        return None if value is None else as_float_array(value, name)

    return convert


def check_finite(value: Array, name: str, fix: str = "") -> Array:
    """Raise (now, or at run time under jit) if `value` has NaN or inf entries."""
    message = f"`{name}` has non-finite entries (NaN or inf). {fix}".strip()
    if is_concrete(value):
        if not bool(np.all(np.isfinite(np.asarray(value)))):
            raise ValueError(message)
        return value
    return eqx.error_if(value, ~jnp.all(jnp.isfinite(value)), message)


def check_condition(value, bad, message: str):
    """Raise ValueError now if `bad` is concrete and true, else attach `eqx.error_if`."""
    if is_concrete(bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
        return value
    return eqx.error_if(value, bad, message)
