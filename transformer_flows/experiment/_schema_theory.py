"""The config schema of `theory` figures: the grids of the theory curves."""

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ._schema_core import (
    _DISTINCT,
    Grid,
    NonNegativeNumber,
    PositiveNumber,
    ShapeList,
    _Experiment,
    _grid,
    _integer_type,
    _Section,
    _unique,
)

# --- theory figures ------------------------------------------------------------------------


class LongContextSection(_Section):
    """One attention layer at β = γ log n on equiangular tokens (`theory.long_context_*`):
    the output cosine against n for each ρ and γ = ratio × γ_c(ρ), γ_c = 1/(1 - ρ)."""

    rho: Annotated[Grid, _DISTINCT] = Field([0.5], description="input cosines, each in (0, 1)")
    gamma_ratio: Annotated[Grid, _DISTINCT] = Field(
        [0.5, 1.0, 1.5], description="γ / γ_c(ρ), each >= 0"
    )
    log10_n: Grid = Field(
        default_factory=lambda: _grid({"start": 0.5, "stop": 12.0, "num": 116}),
        description="token counts n = round(10^value), each >= 2",
    )
    residual: NonNegativeNumber = Field(0.0, description="r in u_i = A_i + r y_i")

    @field_validator("rho")
    @classmethod
    def _open_unit(cls, rho):
        if not all(0 < value < 1 for value in rho):
            raise ValueError(f"every rho must lie in (0, 1), got {rho}")
        return _unique(rho)

    @field_validator("gamma_ratio")
    @classmethod
    def _nonnegative(cls, ratios):
        if not all(value >= 0 for value in ratios):
            raise ValueError(f"every gamma_ratio must be >= 0, got {ratios}")
        return _unique(ratios)

    @field_validator("log10_n")
    @classmethod
    def _token_counts(cls, values):
        if not all(math.log10(2) - 1e-12 <= value <= 15 for value in values):
            raise ValueError(f"every log10_n must lie in [log10(2), 15] (n >= 2), got {values}")
        return values

    @property
    def token_counts(self) -> np.ndarray:
        """n = round(10^log10_n), each once, increasing."""
        return np.unique(np.maximum(np.round(10.0 ** np.asarray(self.log10_n)), 2)).astype(int)


class TheorySection(_Section):
    """The grids of the theory curves (docs/mathematics.md)."""

    n: _integer_type(ge=2) = Field(32, description="tokens n (>= 2)")
    d: ShapeList = Field([2], description="dimensions d (>= 2): one number or a list")
    delta: PositiveNumber = Field(
        1e-3, description="clustering threshold δ of the curves Γ∞,δ (> 0)"
    )
    beta: Grid = Field(
        default_factory=lambda: _grid({"start": 0.0, "stop": 9.0, "num": 91}),
        description="β grid: a number, a list or {start, stop, num}; default linspace(0, 9, 91)",
    )
    tau: Grid = Field(
        default_factory=lambda: _grid({"start": -3.14159, "stop": 3.14159, "num": 801}),
        description="angle grid τ of the landscape figure (radians); default linspace(-π, π, 801)",
    )
    t1: PositiveNumber = Field(30.0, description="final time of the theory curves (> 0)")
    long_context: LongContextSection | None = Field(
        None, description="one attention layer at β = γ log n (figure long_context)"
    )


class TheoryConfig(_Experiment):
    """Curves of `transformer_flows.theory` on grids (Figs. 2 and 6)."""

    experiment: Literal["theory"]
    theory: TheorySection = Field(TheorySection(), description="the grids of the curves")

    @model_validator(mode="after")
    def _long_context_figure(self):
        if "long_context" in self.figures and self.theory.long_context is None:
            raise ValueError(
                "figure long_context needs a theory.long_context section, e.g. "
                "theory: {long_context: {rho: [0.5]}}"
            )
        return self
