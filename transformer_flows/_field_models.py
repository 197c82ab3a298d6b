"""Trainable parametrisations that build an attention field.

A field (`SelfAttention`, `UnnormalizedSelfAttention`) is its own model; an
`AbstractFieldModel` stores other parameters and builds the field from them (`LowRankAttention`:
Q, K, V as W = A Bᵀ factors, optionally with a feed-forward term: a `TransformerBlock`).
`as_field` turns either into the field that is solved.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._attention import AbstractAttentionMethod, AutoAttention
from ._field._base import AbstractSphereField
from ._field._feed_forward import FeedForward, TransformerBlock
from ._field._self_attention import (
    AbstractAttentionField,
    SelfAttention,
    UnnormalizedSelfAttention,
    as_beta,
)
from ._validation import as_float_array


class LowRank(eqx.Module):
    """A weight stored as factors, W = left @ rightᵀ, with `left` (..., k, r) and `right`
    (..., d, r) (leading head/layer axes shared). Rank 1 <= r <= min(k, d)."""

    left: Array
    right: Array

    def __check_init__(self):
        for name, factor in (("left", self.left), ("right", self.right)):
            if factor.ndim < 2:
                raise ValueError(f"`{name}` must have shape (..., ., r), got {factor.shape}.")
        left, right = self.left.shape, self.right.shape
        if left[:-2] != right[:-2] or left[-1] != right[-1]:
            raise ValueError(
                f"`left` {self.left.shape} and `right` {self.right.shape} must share leading "
                "axes and the rank r (last axis): W = left @ rightᵀ."
            )
        if left[-1] == 0:
            raise ValueError(
                f"`left` {left} and `right` {right} have rank r = 0 (last axis), so W = left @ "
                "rightᵀ is the zero matrix and nothing can train; give rank r >= 1 (in a fit "
                "config `model.rank` >= 1, or null for a full matrix)."
            )
        for name, shape in (("left", left), ("right", right)):
            if 0 in shape:
                raise ValueError(
                    f"`{name}` has an empty axis (shape {shape}): an empty head or layer axis "
                    "(H = 0 or L = 0) or a zero dimension gives an empty weight; give every "
                    "axis size >= 1 (in a fit config `model.heads` >= 1, or null for one head)."
                )

    def __init__(self, left, right):
        self.left = as_float_array(left, "left")
        self.right = as_float_array(right, "right")

    @property
    def matrix(self) -> Array:
        return self.left @ jnp.swapaxes(self.right, -1, -2)


class AbstractFieldModel(eqx.Module):
    """A trainable parametrisation that builds an attention field."""

    @abc.abstractmethod
    def field(self) -> AbstractSphereField:
        """The field with the current parameters."""


class LowRankAttention(AbstractFieldModel):
    """(SA) (`normalized=True`) or (USA) whose Q, K, V may be `LowRank` factors (W = A Bᵀ),
    full arrays or None (identity); shapes otherwise as in `SelfAttention`. Every axis of a
    weight must be nonempty (an empty head axis would sum over no heads: a zero field).

    `feed_forward`: an optional `FeedForward` term (its own per-layer axis, if any, must match
    the attention's `layer_duration`); the field is then `TransformerBlock(attention,
    feed_forward)`, trained as the attribute `feed_forward` (`trainable_spec(model,
    [..., "feed_forward"])` trains w, a and b).

    `attention`: the attention method of the built field (default `AutoAttention()`;
    `AnalyticVJPAttention()` for the cheaper exact gradient). It holds no arrays, so it changes
    neither the trained leaves nor a saved model's file."""

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    Q: LowRank | Array | None = None
    K: LowRank | Array | None = None
    V: LowRank | Array | None = None
    normalized: bool = eqx.field(default=True, static=True, kw_only=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    feed_forward: FeedForward | None = eqx.field(default=None, kw_only=True)
    attention: AbstractAttentionMethod = eqx.field(default=AutoAttention(), kw_only=True)

    def __check_init__(self):
        if self.feed_forward is not None and not isinstance(self.feed_forward, FeedForward):
            raise ValueError(
                "`feed_forward` must be a FeedForward(w, a, b, activation=...) or None, got "
                f"{type(self.feed_forward).__name__}."
            )
        # The built field validates the shapes, with its messages; then the empty axes.
        check_nonempty_weights(self.field())

    def field(self) -> AbstractSphereField:
        def dense(w):
            return w.matrix if isinstance(w, LowRank) else w

        cls = SelfAttention if self.normalized else UnnormalizedSelfAttention
        attention = cls(
            self.beta,
            dense(self.Q),
            dense(self.K),
            dense(self.V),
            layer_duration=self.layer_duration,
            attention=self.attention,
        )
        if self.feed_forward is None:
            return attention
        return TransformerBlock(attention, self.feed_forward)


def check_nonempty_weights(field: AbstractSphereField) -> None:
    """Refuse an attention field with an empty weight axis: H = 0 heads or L = 0 layers sum over
    nothing and give the zero field (which would train silently to nothing), k = 0 or d = 0
    leave no scores. A `TransformerBlock` is checked through its attention part; other fields
    pass unchecked."""
    if isinstance(field, TransformerBlock):
        field = field.attention
    if not isinstance(field, AbstractAttentionField):
        return
    for name in ("Q", "K", "V"):
        w = getattr(field, name)
        if w is not None and 0 in w.shape:
            raise ValueError(
                f"`{name}` has an empty axis (shape {w.shape}): an empty head axis (H = 0), "
                "layer axis (L = 0) or matrix axis gives a zero or empty field; give every axis "
                "size >= 1 (in a fit config `model.heads` >= 1, or null for one head)."
            )


def as_field(model: AbstractSphereField | AbstractFieldModel) -> AbstractSphereField:
    """The field a model stands for (a field is its own model)."""
    if isinstance(model, AbstractFieldModel):
        return model.field()
    if isinstance(model, AbstractSphereField):
        return model
    raise ValueError(
        f"`model` must be a sphere field (e.g. SelfAttention) or an AbstractFieldModel "
        f"(e.g. LowRankAttention), got {type(model).__name__}."
    )
