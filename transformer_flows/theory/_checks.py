"""Argument checks shared by the theory functions (errors name the argument, value and fix)."""

import numbers
from collections.abc import Sequence
from typing import TypeAlias

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._validation import check_condition, is_concrete

MODELS = ("SA", "USA")

# Theory functions take numbers, numpy/JAX arrays or (nested) lists of numbers.
Numbers: TypeAlias = ArrayLike | Sequence


def as_output(value, dtype=float) -> np.ndarray | float | int:
    """numpy results: an array, or a Python number for scalar (0-d) results."""
    array = np.asarray(value, dtype=dtype)
    return array.item() if array.ndim == 0 else array


def check_model(model) -> str:
    if model not in MODELS:
        raise ValueError(
            f"`model` must be 'SA' (softmax self-attention, (6.9)) or 'USA' (unnormalised, "
            f"(6.10)), got {model!r}."
        )
    return model


def check_count(value, name: str, minimum: int) -> int:
    """A Python/numpy integer >= minimum (a size such as n, d or a mode number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_count_array(value, name: str, minimum: int) -> np.ndarray:
    """An integer array (or scalar) with every entry >= minimum."""
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))):
            raise ValueError(f"`{name}` must be integers >= {minimum}, got {value!r}.")
        array = array.astype(int)
    if np.any(array < minimum):
        raise ValueError(f"`{name}` must be integers >= {minimum}, got {value!r}.")
    return array


def check_beta_numpy(beta) -> np.ndarray:
    array = np.asarray(beta, dtype=float)
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"`beta` must be finite and >= 0, got {beta!r}.")
    return array


def check_beta_jax(beta, dtype) -> Array:
    """β as a JAX array; checked now when concrete, at run time (eqx.error_if) under jit."""
    array = jnp.asarray(beta, dtype=dtype)
    shown = beta if is_concrete(beta) else "a traced value"
    return check_condition(
        array,
        ~jnp.all(jnp.isfinite(array) & (array >= 0)),
        f"`beta` must be finite and >= 0, got {shown}.",
    )


def check_delta_jax(delta, dtype) -> Array:
    array = jnp.asarray(delta, dtype=dtype)
    shown = delta if is_concrete(delta) else "a traced value"
    return check_condition(
        array,
        ~jnp.all((array > 0) & (array <= 1)),
        f"`delta` must lie in (0, 1] (the level is 1 - delta for a cosine that rises from 0 "
        f"to 1), got {shown}; the paper uses delta=1e-3.",
    )


def check_times(ts, dtype) -> Array:
    ts = jnp.asarray(ts, dtype=dtype)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"`ts` must be a 1-d array of times, got shape {ts.shape}.")
    shown = "" if not is_concrete(ts) else f" got {np.asarray(ts)!r}"
    return check_condition(
        ts,
        ~(jnp.all(jnp.isfinite(ts)) & jnp.all(ts >= 0) & jnp.all(jnp.diff(ts) >= 0)),
        f"`ts` must be finite, >= 0 and non-decreasing (the solve starts at t = 0);{shown}.",
    )
