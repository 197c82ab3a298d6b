"""Dense attention with a hand-written reverse-mode rule.

The forward pass is `DenseAttention`'s: the weights W = softmax_j(s_ij) (SA) or
e^{s_ij - log_shift}/n_k (USA) of the scores s_ij = <β q_i, k_j>, and out = W v. The backward
pass is the analytic one, as in flash-attention's, reusing the forward's W and `out`: for a
cotangent g of `out`,

    dv = Wᵀ g,    dW = g vᵀ,    ds = W ⊙ (dW - rowdot(g, out))  (SA; USA: ds = W ⊙ dW),
    d(βq) = ds k,    dk = dsᵀ (βq),    d log_shift = -Σ_ij ds_ij  (USA).

(For SA, Σ_j W_ij dW_ij = <g_i, out_i>, so no second pass over the row is needed.) Autodiff of
the forward produces the same numbers up to rounding but as many small XLA kernels, about
6× the cost of the forward on the fitting-sized problems; this rule is a few matrix products.
Masked attention (causal, window, key padding, ALiBi, length scaling, masses) falls back to
`DenseAttention`'s autodiff. The rule is a `jax.custom_vjp`, so it serves reverse mode only:
forward mode (`jax.jvp`, `jax.jacfwd`, `diffrax.ForwardMode`) through it raises; use
`DenseAttention()` there.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._attention import AbstractAttentionMethod, DenseAttention, inner_products

__all__ = ["AnalyticVJPAttention"]


def _weights(scores, normalized: bool, log_shift):
    if normalized:
        return jax.nn.softmax(scores, axis=-1)
    return jnp.exp(scores - log_shift) / scores.shape[-1]


def _mix(normalized: bool, queries, keys, values, log_shift):
    return _weights(inner_products(queries, keys), normalized, log_shift) @ values


@jax.custom_vjp
def _mix_softmax(queries, keys, values):
    return _mix(True, queries, keys, values, 0.0)


@jax.custom_vjp
def _mix_unnormalized(queries, keys, values, log_shift):
    return _mix(False, queries, keys, values, log_shift)


def _forward(normalized, queries, keys, values, log_shift):
    weights = _weights(inner_products(queries, keys), normalized, log_shift)
    out = weights @ values
    return out, (weights, out, queries, keys, values)


def _backward(normalized, residuals, g):
    weights, out, queries, keys, values = residuals
    d_values = weights.T @ g
    d_weights = inner_products(g, values)
    if normalized:
        d_weights = d_weights - jnp.sum(g * out, axis=-1, keepdims=True)
    d_scores = weights * d_weights
    return d_scores @ keys, d_scores.T @ queries, d_values, d_scores


def _softmax_fwd(queries, keys, values):
    return _forward(True, queries, keys, values, 0.0)


def _softmax_bwd(residuals, g):
    return _backward(True, residuals, g)[:3]


def _unnormalized_fwd(queries, keys, values, log_shift):
    out, residuals = _forward(False, queries, keys, values, log_shift)
    return out, (residuals, log_shift)


def _unnormalized_bwd(residuals, g):
    residuals, log_shift = residuals
    d_queries, d_keys, d_values, d_scores = _backward(False, residuals, g)
    d_shift = (-jnp.sum(d_scores)).astype(jnp.result_type(log_shift))
    return d_queries, d_keys, d_values, jnp.broadcast_to(d_shift, jnp.shape(log_shift))


_mix_softmax.defvjp(_softmax_fwd, _softmax_bwd)
_mix_unnormalized.defvjp(_unnormalized_fwd, _unnormalized_bwd)


class AnalyticVJPAttention(AbstractAttentionMethod):
    """`DenseAttention()` with the analytic reverse-mode rule of softmax (SA) and
    unnormalised (USA) attention (see the module docstring): the same values, a cheaper
    gradient. O(n²) memory like the dense path; masked attention uses `DenseAttention()`."""

    def mix(
        self,
        queries: Float[Array, "nq k"],
        keys: Float[Array, "nk k"],
        values: Float[Array, "nk d"],
        *,
        beta,
        normalized,
        log_shift,
        mask=None,
    ) -> Float[Array, "nq d"]:
        if mask is not None and not mask.is_trivial:
            return DenseAttention().mix(
                queries,
                keys,
                values,
                beta=beta,
                normalized=normalized,
                log_shift=log_shift,
                mask=mask,
            )
        scaled = jnp.asarray(beta).astype(queries.dtype) * queries
        if normalized:
            return _mix_softmax(scaled, keys, values)
        dtype = jnp.result_type(scaled)
        return _mix_unnormalized(scaled, keys, values, jnp.asarray(log_shift, dtype))
