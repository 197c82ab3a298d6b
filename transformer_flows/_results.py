"""Result codes of the solves: diffrax's, and `overflow` (non-finite is failure, everywhere)."""

import diffrax
import jax
import jax.numpy as jnp

NONFINITE_MESSAGE = (
    "the solve overflowed: a saved state or observable is not finite (NaN or inf), so it is "
    "a failure, not a result. Fix: a smaller step (dt0) or tighter rtol/atol, float64 "
    "(jax.config.update('jax_enable_x64', True)), or, for UnnormalizedSelfAttention at large "
    "beta, time_rescaled=True."
)


class RESULTS(diffrax.RESULTS):
    """diffrax's result codes and one more: `overflow`, a solve whose saved states or
    observables hold NaN or inf (fixed-step solvers run on through an overflow)."""

    overflow = NONFINITE_MESSAGE


def finite_result(result, saved, throw: bool):
    """`result` promoted to `RESULTS`, with `overflow` where it succeeded but `saved` (any
    pytree of arrays) holds a NaN or inf; raises that message when `throw`. Returns
    (result, saved), with the check threaded through `saved` under jit."""
    leaves = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(saved)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    finite = jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
    result = RESULTS.promote(result)
    overflowed = (result == RESULTS.successful) & ~finite
    if throw:
        saved = RESULTS.overflow.error_if(saved, overflowed)
    return RESULTS.where(overflowed, RESULTS.overflow, result), saved
