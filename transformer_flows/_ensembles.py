"""Random weight ensembles of the paper's Fig. 5, following the authors' code.

G denotes a d×d matrix of i.i.d. N(0, 1) entries. Only the product B = QᵀK enters the
attention scores, so each query/key ensemble returns a (Q, K) pair with that product.

Convention: our tokens are column vectors and V acts as V x_j. The authors'
`phase-diagrams.py` stores tokens as rows and multiplies by V on the right, x_jᵀ V, which is
Vᵀ acting on column tokens. For symmetric V (GOE, Wishart, identity) the two agree; for a
non-symmetric V (a Ginibre V, or V = QᵀK with Ginibre Q, K: Fig. 5(c)) they are different
models. `random_weights(..., value_convention="rows")` returns the authors' Vᵀ.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

Matrix = Float[Array, "d d"]


def ginibre(key: PRNGKeyArray, d: int, *, dtype=None) -> Matrix:
    """G / sqrt(d): real Ginibre, scaled so that |G x| ≈ 1 for unit x."""
    return jax.random.normal(key, (d, d), dtype=dtype or jnp.result_type(float)) / jnp.sqrt(d)


def ginibre_query_key(key: PRNGKeyArray, d: int, *, dtype=None) -> tuple[Matrix, Matrix]:
    """(Q, K) with QᵀK = G_1 G_2 / sqrt(d) (`--randomKQ 1`)."""
    k1, k2 = jax.random.split(key)
    scale = d**0.25
    g1 = jax.random.normal(k1, (d, d), dtype=dtype or jnp.result_type(float))
    g2 = jax.random.normal(k2, (d, d), dtype=dtype or jnp.result_type(float))
    return g1.T / scale, g2 / scale


def goe_query_key(key: PRNGKeyArray, d: int, *, dtype=None) -> tuple[Matrix, Matrix]:
    """(Q, K) = (I, B) with B = (G + Gᵀ)/sqrt(2), a GOE (Wigner) matrix (`--randomKQ 3`)."""
    g = jax.random.normal(key, (d, d), dtype=dtype or jnp.result_type(float))
    return jnp.eye(d, dtype=g.dtype), (g + g.T) / jnp.sqrt(2.0)


def wishart(key: PRNGKeyArray, d: int, *, dtype=None) -> Matrix:
    """G Gᵀ / sqrt(d), positive semidefinite (`--randomV 1`)."""
    g = jax.random.normal(key, (d, d), dtype=dtype or jnp.result_type(float))
    return g @ g.T / jnp.sqrt(d)


_QUERY_KEY = {"ginibre": ginibre_query_key, "goe": goe_query_key}
_VALUE = ("identity", "ginibre", "wishart", "qk", "minus_qk")
_CONVENTIONS = ("columns", "rows")


def random_weights(
    key: PRNGKeyArray,
    d: int,
    *,
    query_key: str = "ginibre",
    value: str = "wishart",
    value_convention: str = "columns",
    dtype=None,
) -> tuple[Matrix, Matrix, Matrix | None]:
    """Draw (Q, K, V) from a Fig. 5 ensemble.

    - `query_key`: "ginibre" (QᵀK = G_1G_2/sqrt d) or "goe" (QᵀK = (G+Gᵀ)/sqrt 2).
    - `value`: "identity" (V = None), "ginibre", "wishart", "qk" (V = QᵀK/normV) or
      "minus_qk" (V = -QᵀK/normV), normV = sqrt(d) for Ginibre and sqrt(d+1) for GOE.
    - `value_convention`: "columns" (V acts on column tokens, V x_j: the paper's equations)
      or "rows" (the authors' code, x_jᵀ V on row tokens: returns Vᵀ). Same draws either way.
    """
    if query_key not in _QUERY_KEY:
        raise ValueError(f"`query_key` must be one of {sorted(_QUERY_KEY)}, got {query_key!r}.")
    if value not in _VALUE:
        raise ValueError(f"`value` must be one of {list(_VALUE)}, got {value!r}.")
    if value_convention not in _CONVENTIONS:
        raise ValueError(
            f"`value_convention` must be 'columns' (V x_j, the paper's equations) or 'rows' "
            f"(x_jᵀ V, the authors' code), got {value_convention!r}."
        )
    Q, K, V = _draw(key, d, query_key, value, dtype)
    if V is not None and value_convention == "rows":
        V = V.T
    return Q, K, V


def _draw(key, d, query_key, value, dtype):
    kqk, kv = jax.random.split(key)
    Q, K = _QUERY_KEY[query_key](kqk, d, dtype=dtype)
    if value == "identity":
        return Q, K, None
    if value == "ginibre":
        return Q, K, ginibre(kv, d, dtype=dtype)
    if value == "wishart":
        return Q, K, wishart(kv, d, dtype=dtype)
    norm = jnp.sqrt(d + 1.0) if query_key == "goe" else jnp.sqrt(float(d))
    sign = 1.0 if value == "qk" else -1.0
    return Q, K, sign * (Q.T @ K) / norm
