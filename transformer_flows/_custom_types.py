"""Shape aliases used across the package (jaxtyping)."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float

Particles: TypeAlias = Float[Array, "n d"]
Angles: TypeAlias = Float[Array, " n"]
Scores: TypeAlias = Float[Array, "n n"]
Times: TypeAlias = Float[Array, " times"]
Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | Float[ArrayLike, ""]
