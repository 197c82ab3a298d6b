"""The shared core of the config schema: the value types (numbers, integers, lists, grids,
each with the JSON Schema of the forms the loader accepts), the registered names, and the
sections every experiment kind has (`SolverConfig`, `PlotConfig`, `_Experiment`)."""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    field_validator,
    model_validator,
)

from ._registry import (
    FIELDS,
    FIGURES,
    IMPORT_PATH,
    SOLVERS,
    imports_allowed,
    refuse_if_imports_refused,
)
from ._yaml import bounded_free_form

# --- value types ---------------------------------------------------------------------------
#
# Each type validates what the loader accepts (YAML scalars, lists, ranges) into one normal
# form. Its JSON Schema (`transformer-flows schema`) describes the accepted input, not the
# normal form: `_Accepts` rewrites the schema of the normal form into the input's. Bounds sit
# before the normalising validator, on the float/int itself, so pydantic writes them as the
# standard keywords `minimum`, `exclusiveMinimum`, ... (a bound placed after a validator leaks
# into the JSON Schema under its pydantic name, `ge`, `gt`, ...).

# What `float(...)` accepts and is finite: YAML 1.1 reads "1e-3" (no dot) as a string.
NUMBER_STRING = (
    r"^\s*[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?\s*$"
)


@dataclasses.dataclass(frozen=True)
class _Accepts:
    """JSON Schema of the input forms: `forms(schema)` maps the JSON Schema of the normal form
    to that of everything the validator before it accepts."""

    forms: Callable[[dict], dict]

    def __get_pydantic_json_schema__(self, core_schema, handler) -> dict:
        return self.forms(handler(core_schema))


def _number_forms(schema: dict) -> dict:
    """A number, or a string that `float` reads (YAML 1.1 reads 1e-3 as a string)."""
    return {"anyOf": [schema, {"type": "string", "pattern": NUMBER_STRING}]}


def _one_or_list(schema: dict) -> dict:
    """One value stands for a list of one."""
    return {"anyOf": [schema["items"], schema]}


_RANGE = {
    "type": "object",
    "title": "range",
    "description": "inclusive linspace(start, stop, num)",
    "properties": {
        "start": {**_number_forms({"type": "number"}), "description": "first value"},
        "stop": {
            **_number_forms({"type": "number"}),
            "description": "last value (> start when num > 1)",
        },
        "num": {"type": "integer", "minimum": 1, "description": "number of values (>= 1)"},
    },
    "required": ["start", "stop", "num"],
    "additionalProperties": False,
}


def _grid_forms(schema: dict) -> dict:
    """One number, a list of numbers, or {start, stop, num} (inclusive linspace)."""
    return {"anyOf": [schema["items"], schema, _RANGE]}


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string.
            return float(value)
        except ValueError:
            raise ValueError(f"must be a number, got the string {value!r}") from None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _integer(value: Any) -> Any:
    return value.item() if isinstance(value, np.integer) else value


def _as_list(value: Any) -> Any:
    """One value stands for a list of one."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _number_type(**bounds) -> Any:
    """A finite number (or a numeric string) within `bounds` (gt, ge, lt, le)."""
    return Annotated[
        float,
        Field(allow_inf_nan=False, **bounds),
        BeforeValidator(_number),
        _Accepts(_number_forms),
    ]


def _integer_type(**bounds) -> Any:
    """An integer (not a boolean, not a float) within `bounds` (ge, le)."""
    return Annotated[int, Strict(), Field(**bounds), BeforeValidator(_integer)]


def _listed(item: Any, *, min_length: int = 1) -> Any:
    """A list of `item` (at least `min_length`), or one `item` standing for a list of one."""
    length = (Field(min_length=min_length),) if min_length else ()
    return Annotated[(list[item], *length, BeforeValidator(_as_list), _Accepts(_one_or_list))]


Number = _number_type()
PositiveNumber = _number_type(gt=0)
NonNegativeNumber = _number_type(ge=0)
Integer = _integer_type()
PositiveInteger = _integer_type(ge=1)
NonNegativeInteger = _integer_type(ge=0)
# jax.random.key takes a signed 64-bit seed.
Seed = _integer_type(ge=0, le=2**63 - 1)
Precision = Literal["float64", "float32"]
ShapeList = _listed(_integer_type(ge=2))


def _grid(value: Any) -> Any:
    """A list of numbers, one number, or {start, stop, num} (inclusive linspace)."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"start", "stop", "num"}
        if unknown or not {"start", "stop", "num"} <= set(value):
            raise ValueError(
                "a grid mapping has exactly the keys start, stop, num (inclusive linspace), "
                f"got {sorted(value)}"
            )
        start, stop, num = _number(value["start"]), _number(value["stop"]), value["num"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"grid `num` must be an integer >= 1, got {num!r}")
        if num > 1 and not stop > start:
            raise ValueError(f"grid `stop` must be > start={start} when num > 1, got {stop}")
        return [float(v) for v in np.linspace(start, stop, num)]
    return _as_list(value)


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"has repeated values {values}; list each once")
    return values


Grid = Annotated[list[Number], Field(min_length=1), BeforeValidator(_grid), _Accepts(_grid_forms)]


class _Distinct:
    """JSON Schema of a list whose validator refuses repeated values (`_unique`): uniqueItems
    on its list form."""

    def __get_pydantic_json_schema__(self, core_schema, handler) -> dict:
        schema = handler(core_schema)
        for part in (schema, *schema.get("anyOf", ())):
            if part.get("type") == "array":
                part["uniqueItems"] = True
        return schema


_DISTINCT = _Distinct()


def _registered(registry) -> GroupedMetadata:
    """A name of `registry`, or a list of them (each registered, each once); the error lists
    the registered names."""

    def check(value):
        if isinstance(value, str):
            registry[value]
            return value
        for name in value:
            registry[name]
        return _unique(value)

    return _Group((AfterValidator(check), _DISTINCT))


@dataclasses.dataclass(frozen=True)
class _Group(GroupedMetadata):
    """Several Annotated metadata as one (pydantic unpacks it)."""

    parts: tuple

    def __iter__(self):
        return iter(self.parts)


def _resolvable_field(name: str) -> str:
    """A registered name, or an import path `module:Class`: checked for its form only (and
    refused under TRANSFORMER_FLOWS_NO_IMPORTS); imported only inside `allow_imports()`, i.e.
    by `run_experiment` after the rest of the config validated (data is never code)."""
    if FIELDS.is_import_path(name):
        if not IMPORT_PATH.match(name):
            raise ValueError(
                f"{name!r} is neither a registered field ({FIELDS.names()}) nor an import "
                "path `package.module:Class`"
            )
        refuse_if_imports_refused(name, "field")
        if imports_allowed():
            FIELDS.resolve(name)
        return name
    FIELDS[name]  # unknown names: the error lists the registered ones
    return name


FieldName = Annotated[str, AfterValidator(_resolvable_field)]


class _Section(BaseModel):
    """Unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- shared vocabulary ---------------------------------------------------------------------


class SolverConfig(_Section):
    """How the flow is integrated: a registered solver (`SOLVERS`) and its options."""

    name: Annotated[str, _registered(SOLVERS)] = Field(
        "tsit5", description="registered solver, e.g. tsit5, normalized_euler"
    )
    rtol: PositiveNumber = Field(1e-6, description="relative tolerance (adaptive solvers)")
    atol: PositiveNumber = Field(1e-6, description="absolute tolerance (adaptive solvers)")
    dt: PositiveNumber | None = Field(None, description="the step of fixed-step solvers")
    max_steps: PositiveInteger = Field(
        16_384, description="most solver steps per solve; a solve that needs more fails (masked)"
    )
    allow_failures: bool = Field(
        False, description="finish with exit status 0 although some solves failed (masked)"
    )

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        # Before issue 9: `method: adaptive` + `scheme: tsit5`, or `method: normalized_euler`.
        # A migration never drops a key silently: what it cannot carry over is refused.
        if isinstance(raw, Mapping) and ("method" in raw or "scheme" in raw):
            raw = dict(raw)
            method, scheme = raw.pop("method", None), raw.pop("scheme", None)
            old = {k: v for k, v in (("method", method), ("scheme", scheme)) if v is not None}
            if "name" in raw:
                raise ValueError(
                    f"solver.name = {raw['name']!r} and the old keys {old} both name a solver; "
                    f"keep only solver.name (e.g. solver.name={scheme or method})"
                )
            if scheme is not None and method not in (None, "adaptive"):
                raise ValueError(
                    f"solver.method = {method!r} (a fixed-step solver) and solver.scheme = "
                    f"{scheme!r} (an adaptive one) disagree; write solver.name=<one of them>"
                )
            raw["name"] = scheme or ("tsit5" if method in (None, "adaptive") else method)
            name = raw["name"]
            if name in SOLVERS and SOLVERS[name].adaptive and raw.get("dt") is not None:
                raise ValueError(
                    f"solver.dt = {raw['dt']!r} would be ignored: the old keys {old} mean the "
                    f"adaptive solver {name!r}, which chooses its own steps. Fix: remove "
                    f"solver.dt, or ask for a fixed step with solver.name=normalized_euler and "
                    "solver.dt"
                )
        return raw

    @model_validator(mode="after")
    def _step(self) -> "SolverConfig":
        if SOLVERS[self.name].adaptive:
            if self.dt is not None:
                raise ValueError(
                    f"`dt` is the step of fixed-step solvers; {self.name!r} chooses its own "
                    "steps from rtol/atol: remove solver.dt (override: solver.dt=null)"
                )
        elif self.dt is None and not SOLVERS[self.name].layered:
            raise ValueError(
                f"solver {self.name!r} has a fixed step: set solver.dt, e.g. solver.dt=0.1"
            )
        return self

    @property
    def adaptive(self) -> bool:
        return SOLVERS[self.name].adaptive

    def require_step(self, kind: str) -> None:
        """Experiments without a layer axis refuse `solver.dt: null` (one step per layer),
        which only a simulation sweep's model.layers defines."""
        if not self.adaptive and self.dt is None:
            raise ValueError(
                f"solver.dt: null (one step per layer) is for simulation sweeps with "
                f"model.layers; a {kind} config needs a step: set solver.dt, e.g. solver.dt=0.1"
            )

    def describe(self) -> str:
        if self.adaptive:
            return f"Renormalized({self.name}) adaptive PID, rtol={self.rtol:g}, atol={self.atol:g}"
        if self.dt is None:
            return f"{self.name} one step per layer (dt = t1/L)"
        return f"{self.name} fixed step dt={self.dt:g}"


FigureFormat = Literal["png", "pdf", "svg"]


class _FigureFiles(_Section):
    """How figures are written (presentation only: a rerun may change it and still resume)."""

    format: Annotated[_listed(FigureFormat), Field(max_length=3), _DISTINCT] = Field(
        ["png"],
        description="file format of every figure: png, pdf or svg, or a list of them (each "
        "figure is written once per format)",
    )
    dpi: _integer_type(ge=10, le=1200) = Field(
        90, description="resolution in dots per inch of png files (and of raster parts of pdf/svg)"
    )
    style: str | None = Field(
        None,
        description="matplotlib style while drawing: a library style name (e.g. ggplot, "
        "seaborn-v0_8-paper) or a path to a .mplstyle file, read as key: value data (nothing "
        "is executed; keys that run LaTeX are refused); null: matplotlib's defaults",
    )

    @field_validator("format")
    @classmethod
    def _distinct_formats(cls, formats):
        if len(set(formats)) != len(formats):
            raise ValueError(f"formats must be distinct, got {formats}")
        return formats

    @field_validator("style")
    @classmethod
    def _known_style(cls, style):
        from ._style import check_style

        return None if style is None else check_style(style)


class PlotConfig(_FigureFiles):
    """Presentation only (a rerun may change it and still resume)."""

    snapshot_times: Grid | None = Field(
        None,
        description="times (>= 0) of the snapshot panels (circle_snapshots); null: first, "
        "middle and last save time",
    )
    movie_frames: PositiveInteger = Field(60, description="frames of the movie figure")
    max_panels_per_row: PositiveInteger = Field(3, description="panels per row of a figure")
    example_start: NonNegativeInteger = Field(
        0, description="index of the random start drawn in the per-start figures"
    )

    @field_validator("snapshot_times")
    @classmethod
    def _nonnegative(cls, values):
        if values is not None and min(values) < 0:
            raise ValueError(f"save times are >= 0, got {values}")
        return values


class _Experiment(_Section):
    name: str | None = Field(None, description="label of the run (default: the file's stem)")
    description: str = Field("", description="free text about the run (saved with it)")
    precision: Precision = Field(
        "float64", description="float dtype of the states and the solve: float64 or float32"
    )
    figures: Annotated[_listed(str, min_length=0), _registered(FIGURES)] = Field(
        [], description="registered figures to draw after the run (one name or a list)"
    )
    plot: PlotConfig = Field(PlotConfig(), description="figure options (presentation only)")
    smoke: Annotated[dict[str, Any], AfterValidator(bounded_free_form)] = Field(
        {}, description="key.path: value overrides applied by --smoke (toy size)"
    )
    _smoke_run: bool = PrivateAttr(False)

    @property
    def smoke_run(self) -> bool:
        """Whether the `smoke:` overrides were applied (a toy-size run)."""
        return self._smoke_run

    @field_validator("name")
    @classmethod
    def _file_name(cls, name):
        if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
            raise ValueError(
                f"the name labels output files, so it cannot be empty or hold '/' or '\\', "
                f"got {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _figure_kinds(self):
        for figure in self.figures:
            if FIGURES[figure].experiment != self.experiment:
                allowed = [f for f in FIGURES if FIGURES[f].experiment == self.experiment]
                raise ValueError(
                    f"figure {figure!r} draws {FIGURES[figure].experiment} runs; a "
                    f"{self.experiment} experiment draws {allowed}"
                )
        return self

    def numerics(self) -> dict:
        """The resolved config without the parts that do not change the numbers (a rerun
        may change those and still resume)."""
        # `solver.allow_failures` decides the exit status, not the numbers.
        return self.model_dump(
            mode="json",
            exclude={
                "name": True,
                "description": True,
                "figures": True,
                "plot": True,
                "smoke": True,
                "solver": {"allow_failures"},
            },
        )

    def resolved(self) -> dict:
        """The resolved config (defaults filled in), as saved with the output."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True)


def _location(loc: Sequence) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-", "lax-", "json-", "literal[")) or part in (
            "list[...]",
        ):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "<top level>"
