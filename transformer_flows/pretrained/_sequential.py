"""`SequentialBlock`: Euclidean fields applied one after the other, the Pre-LN Transformer
block of GPT-2 and LLaMA (below both `_fields` and `_llama`, which build it)."""

from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._field._base import AbstractEuclideanField


class SequentialBlock(AbstractEuclideanField):
    """Euclidean fields applied one after the other in the discrete layer and summed in the
    continuous limit: the Pre-LN Transformer block of GPT-2,
    `SequentialBlock((PreLN(attention), PreLN(feed_forward)))`, whose layer is
        y = x + h·A(LN x),   x' = y + h·F(LN y),
    (`TransformerBlock`'s Lie–Trotter composition, for states in R^d) and whose h → 0 limit
    is ẋ = A(θ) + F(θ). `PreLN(TransformerBlock(attention, feed_forward))` has the same limit
    but the parallel layer x' = x + h(A(LN x) + F(LN x)).
    """

    parts: tuple[AbstractEuclideanField, ...]

    def __check_init__(self):
        if not isinstance(self.parts, tuple) or not self.parts:
            raise ValueError(f"`parts` must be a non-empty tuple of fields, got {self.parts!r}.")
        for part in self.parts:
            if not isinstance(part, AbstractEuclideanField):
                raise ValueError(
                    f"`parts` must be Euclidean fields such as PreLN(SelfAttention(...)), got "
                    f"{type(part).__name__}."
                )

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        velocities = [part(t, x, args) for part in self.parts]
        return sum(velocities[1:], start=velocities[0])

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        for part in self.parts:
            x = part.residual_layer(t, x, h, args)
        return x

    def jump_times(self) -> Float[Array, " jumps"] | None:
        from .._field._layer_norm import merged_jump_times

        return merged_jump_times(*self.parts)

    def check_state(self, x) -> None:
        for part in self.parts:
            part.check_state(x)
