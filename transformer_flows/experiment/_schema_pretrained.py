"""The config schema of `pretrained` experiments: a local checkpoint, its texts, the
statistics and the flow compared with its layers."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ._errors import ConfigError
from ._registry import OBSERVABLES
from ._schema_core import (
    _DISTINCT,
    NonNegativeNumber,
    Number,
    PositiveInteger,
    PositiveNumber,
    Precision,
    SolverConfig,
    _Experiment,
    _FigureFiles,
    _integer_type,
    _listed,
    _number_type,
    _registered,
    _Section,
    _unique,
)

# --- pretrained models ---------------------------------------------------------------------

# What a `pretrained` experiment compares: the model's own hidden states (our JAX forward), the
# discrete layer map of our fields with the same weights, and the continuous flow.
PRETRAINED_SOURCES = ("model", "discrete_map", "flow")
# The default `statistics`: every built-in observable that is a scalar for any d (a fixed list,
# so observables registered later do not change the fingerprint of existing configs).
HIDDEN_STATISTICS = (
    "mean_cosine",
    "centred_cosine",
    "effective_rank",
    "cluster_count",
    "clustered_fraction",
    "energy",
    "mean_radius",
)


class PretrainedFlowSection(_Section):
    """The continuous flow (layer l on [l, l + 1)) is saved at t = 0, 1, …, layers, where it
    meets the discrete layers; `t_max` adds `tail_num` more save times, geometrically spaced
    up to t_max, with the last (shared) layer's weights: ALBERT's t → ∞."""

    t_max: PositiveNumber | None = Field(
        None, description="flow further to this time (ALBERT, shared layer); null: no tail"
    )
    tail_num: PositiveInteger = Field(16, description="save times of the tail")
    solver: SolverConfig = Field(
        SolverConfig(rtol=1e-5, atol=1e-5),
        description="how the flow is integrated (tf.solve); float32 states: tolerances >= 1e-6",
    )


class PretrainedHistogramSection(_Section):
    bins: _integer_type(ge=2, le=10_000) = Field(
        40, description="equal bins of <θ_i, θ_j> on [-1, 1] (density over pairs i < j)"
    )


class PretrainedPlotConfig(_FigureFiles):
    """Presentation only (a rerun may change it and still resume)."""

    histogram_layers: Annotated[_listed(NonNegativeNumber, min_length=0), _DISTINCT] | None = Field(
        None,
        description="layers (flow times) with a histogram panel; null: 0, 1 and quarters of "
        "the depth",
    )
    max_panels_per_row: PositiveInteger = Field(4, description="panels per row of a figure")

    @field_validator("histogram_layers")
    @classmethod
    def _unique_layers(cls, values):
        return None if values is None else _unique(values)


class PretrainedConfig(_Experiment):
    """Hidden-state statistics per layer of a local pretrained checkpoint, for its own layers,
    the discrete layer map of our fields with the same weights and the continuous flow."""

    experiment: Literal["pretrained"]
    precision: Precision = Field(
        "float32", description="float dtype of the forward and the flow: float32 or float64"
    )
    checkpoint: str = Field(
        description="directory of a Hugging Face-style checkpoint (config.json, "
        "model.safetensors, tokenizer.json)",
        min_length=1,
    )
    texts: _listed(str) | None = Field(None, description="input texts (or text_file)")
    text_file: str | None = Field(
        None, description="UTF-8 file of input texts, one per non-empty line (or texts)"
    )
    max_tokens: _integer_type(ge=2) | None = Field(
        None, description="keep the first max_tokens tokens of each text; null: all"
    )
    layers: PositiveInteger | None = Field(
        None, description="layers to run; null: the model's depth (ALBERT may go beyond)"
    )
    compare: Annotated[_listed(Literal["model", "discrete_map", "flow"]), _DISTINCT] = Field(
        list(PRETRAINED_SOURCES), description="which of model, discrete_map, flow"
    )
    statistics: Annotated[_listed(str), _registered(OBSERVABLES)] = Field(
        list(HIDDEN_STATISTICS), description="registered scalar observables"
    )
    delta: _number_type(gt=0, lt=2) = Field(
        1e-3, description="cluster_count and clustered_fraction: <θ_i, θ_j> >= 1 - delta"
    )
    beta: Number = Field(1.0, description="β of the energy statistic")
    histogram: PretrainedHistogramSection = Field(
        PretrainedHistogramSection(), description="histograms of <θ_i, θ_j> per layer"
    )
    flow: PretrainedFlowSection = Field(
        PretrainedFlowSection(), description="the continuous flow and its tail"
    )
    plot: PretrainedPlotConfig = Field(
        PretrainedPlotConfig(), description="figure options (presentation only)"
    )

    @field_validator("texts")
    @classmethod
    def _nonempty_texts(cls, texts):
        if texts is not None and any(not text.strip() for text in texts):
            raise ValueError("every text must hold some non-blank characters")
        return texts

    @field_validator("compare")
    @classmethod
    def _unique_sources(cls, values):
        return _unique(values)

    @model_validator(mode="after")
    def _pretrained_checks(self):
        self.flow.solver.require_step("pretrained")
        if (self.texts is None) == (self.text_file is None):
            raise ValueError(
                "texts: give the input texts either as `texts` (a list) or as `text_file` (one "
                f"text per line), not {'both' if self.texts else 'neither'}"
            )
        for name in self.statistics:
            entry = OBSERVABLES[name]
            if entry.dims or entry.d is not None or entry.per_shape:
                scalar = [
                    n
                    for n in OBSERVABLES
                    if not OBSERVABLES[n].dims
                    and OBSERVABLES[n].d is None
                    and not OBSERVABLES[n].per_shape
                ]
                raise ValueError(
                    f"statistics: {name!r} is not a scalar statistic of states of any "
                    f"dimension; choose among {scalar}"
                )
        if self.flow.t_max is not None:
            if "flow" not in self.compare:
                raise ValueError("flow.t_max: the flow's tail needs 'flow' in `compare`")
            if self.layers is not None and self.flow.t_max <= self.layers:
                raise ValueError(
                    f"flow.t_max: the tail goes beyond the last layer, so t_max must exceed "
                    f"layers = {self.layers}, got {self.flow.t_max}"
                )
        return self

    def read_texts(self) -> list[str]:
        """The input texts: `texts`, or the non-empty lines of `text_file`."""
        if self.texts is not None:
            return list(self.texts)
        path = Path(self.text_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"config key `text_file`: cannot read {str(path)!r} ({err}). Fix: point "
                "text_file at a UTF-8 file with one text per line, or give `texts`."
            ) from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise ConfigError(f"config key `text_file`: {str(path)!r} holds no text.")
        return texts
