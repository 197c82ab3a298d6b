"""The config schema, declared once: pydantic models of the three experiment kinds
(`simulation` sweeps, `theory` figures, `fit`), sharing one vocabulary for models, solvers,
precision and observables.

Defaults, validation, the saved (resolved) config, the fingerprint of a run and
`transformer-flows schema` (JSON Schema) all derive from these declarations. Names (fields,
solvers, weight ensembles, observables, figures, fit tasks) are checked against the
registries of `_registry.py`; they become objects in `_build.py` only.
"""

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from ._errors import ConfigError
from ._overrides import _model_in, apply_overrides
from ._registry import (
    FIELDS,
    FIGURES,
    INTERACTIONS,
    OBSERVABLES,
    PLACEMENTS,
    SOLVERS,
    TASKS,
    WEIGHTS,
    allow_imports,
)
from ._schema_core import (
    NUMBER_STRING as NUMBER_STRING,
    FieldName as FieldName,
    Grid as Grid,
    Integer as Integer,
    NonNegativeInteger as NonNegativeInteger,
    NonNegativeNumber as NonNegativeNumber,
    Number as Number,
    PlotConfig as PlotConfig,
    PositiveInteger as PositiveInteger,
    PositiveNumber as PositiveNumber,
    Precision as Precision,
    Seed as Seed,
    ShapeList as ShapeList,
    SolverConfig as SolverConfig,
    _Experiment,
    _location,
    _number_forms,
)
from ._schema_fit import (
    FeedForwardConfig as FeedForwardConfig,
    FitConfig as FitConfig,
    FitModelConfig as FitModelConfig,
    FlowConfig as FlowConfig,
    TaskConfig as TaskConfig,
    TrainConfig as TrainConfig,
)
from ._schema_mean_field import (
    MeanFieldConfig as MeanFieldConfig,
    MeanFieldModelConfig as MeanFieldModelConfig,
    MeanFieldObservablesConfig as MeanFieldObservablesConfig,
    MeanFieldSolverConfig as MeanFieldSolverConfig,
    MeanFieldSweepConfig as MeanFieldSweepConfig,
)
from ._schema_pretrained import (
    HIDDEN_STATISTICS as HIDDEN_STATISTICS,
    PRETRAINED_SOURCES as PRETRAINED_SOURCES,
    PretrainedConfig as PretrainedConfig,
    PretrainedFlowSection as PretrainedFlowSection,
    PretrainedHistogramSection as PretrainedHistogramSection,
    PretrainedPlotConfig as PretrainedPlotConfig,
)
from ._schema_simulation import (
    NOISE_PARAMETERS as NOISE_PARAMETERS,
    ModelConfig as ModelConfig,
    NoiseConfig as NoiseConfig,
    ObservablesConfig as ObservablesConfig,
    SimulationConfig as SimulationConfig,
    SweepConfig as SweepConfig,
    TimeConfig as TimeConfig,
    weights_parameters as weights_parameters,
)
from ._schema_theory import (
    LongContextSection as LongContextSection,
    TheoryConfig as TheoryConfig,
    TheorySection as TheorySection,
)
from ._yaml import MAX_YAML_BYTES, bounded_free_form, load_yaml

# --- the tagged union ----------------------------------------------------------------------

KINDS: dict[str, type[_Experiment]] = {
    "simulation": SimulationConfig,
    "theory": TheoryConfig,
    "fit": FitConfig,
    "pretrained": PretrainedConfig,
    "mean_field": MeanFieldConfig,
}
Config = SimulationConfig | TheoryConfig | FitConfig | PretrainedConfig | MeanFieldConfig


def _kind_of(raw: Mapping) -> type[_Experiment]:
    kind = raw.get("experiment", "simulation")
    if kind not in KINDS:
        raise ConfigError(
            f"config key `experiment`: must be one of {list(KINDS)}, got {kind!r}. Fix: set "
            "experiment: simulation (sweeps), theory (theory figures), fit, pretrained or "
            "mean_field (the n → ∞ equation on the circle)."
        )
    return KINDS[kind]


def json_schema() -> dict:
    """JSON Schema of every experiment kind (for editors), with the registered names."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "transformer-flows experiment config",
        "oneOf": [],
        "$defs": {},
    }
    for kind, model in KINDS.items():
        part = model.model_json_schema(ref_template="#/$defs/{model}")
        schema["$defs"].update(part.pop("$defs", {}))
        part["properties"]["experiment"] = {
            "const": kind,
            "description": f"the experiment kind: {', '.join(KINDS)}"
            + (" (may be left out for a simulation)" if kind == "simulation" else ""),
            **({"default": kind} if kind == "simulation" else {}),
        }
        schema["$defs"][model.__name__] = part
        schema["oneOf"].append({"$ref": f"#/$defs/{model.__name__}"})
    _name_hints(schema["$defs"])
    registries = {
        "fields": FIELDS.names(),
        "solvers": SOLVERS.names(),
        "weights": WEIGHTS.names(),
        "observables": OBSERVABLES.names(),
        "figures": FIGURES.names(),
        "tasks": TASKS.names(),
        "interactions": INTERACTIONS.names(),
    }
    schema["x-registered-names"] = registries
    _old_keys(schema["$defs"])
    _say_defaults(schema["$defs"])
    return schema


# Keys of configs written before issue 9, which the loader still reads (the `_migrate`
# validators move them to the new keys): in the schema as `deprecated`, so such configs
# validate and editors flag the keys.
_NUMBER = _number_forms({"type": "number"})
_OLD_KEYS = {
    "SolverConfig": {
        "method": ({"type": "string"}, "adaptive (with scheme) or a fixed-step solver: use name"),
        "scheme": ({"type": "string"}, "the adaptive solver of method: adaptive: use name"),
    },
    "FitModelConfig": {
        "kind": ({"type": "string"}, "sa or usa (or a field): use field"),
        "dim": ({"type": "integer", "minimum": 2}, "the token dimension: use d"),
        "beta": (_NUMBER, "β: use params.beta"),
    },
    "FlowConfig": {
        "solver": ({"type": "string"}, "use solver.name"),
        "dt0": ({"anyOf": [_NUMBER, {"type": "null"}]}, "use solver.dt"),
        "rtol": (_NUMBER, "use solver.rtol"),
        "atol": (_NUMBER, "use solver.atol"),
        "max_steps": ({"type": "integer", "minimum": 1}, "use solver.max_steps"),
    },
}


def _old_keys(definitions: dict) -> None:
    for model, keys in _OLD_KEYS.items():
        part = definitions[model]
        for key, (schema, text) in keys.items():
            part["properties"][key] = {
                **schema,
                "deprecated": True,
                "description": f"old key (configs before issue 9), read as the new one: {text}",
            }
    # `d` or the old `dim`.
    model = definitions["FitModelConfig"]
    model["required"].remove("d")
    if not model["required"]:
        del model["required"]
    model["anyOf"] = [{"required": ["d"]}, {"required": ["dim"]}]


def _say_defaults(node: Any) -> None:
    """End the description of every property that has a short default with that default, so
    editors that show only the description show it too (sections: their keys say theirs)."""
    if isinstance(node, list):
        for item in node:
            _say_defaults(item)
        return
    if not isinstance(node, dict):
        return
    for name, value in node.items():
        if name in ("default", "const", "enum", "examples"):
            continue
        if name == "properties":
            for prop in value.values():
                default = json.dumps(prop.get("default"), ensure_ascii=False)
                if (
                    "default" in prop
                    and "default" not in prop.get("description", "default").lower()
                    and not (isinstance(prop["default"], dict) and prop["default"])
                    and len(default) <= 60
                ):
                    prop["description"] = f"{prop['description'].rstrip('.')}. Default: {default}."
        _say_defaults(value)


def _name_hints(definitions: dict) -> None:
    """Registered names as enums where a config takes a name, so editors complete them; the
    field accepts an import path `module:Class` too; a task is one of the registered kinds."""
    field_name = {"anyOf": [{"enum": FIELDS.names()}, {"type": "string", "pattern": r"^\S+:\w+$"}]}
    for model in ("ModelConfig", "FitModelConfig"):
        definitions[model]["properties"]["field"].update(field_name)
    properties = {name: definitions[name]["properties"] for name in definitions}
    _enum(properties["SolverConfig"]["name"], SOLVERS.names())
    _enum(properties["ModelConfig"]["weights"], WEIGHTS.names())
    _enum(properties["ModelConfig"]["placement"], PLACEMENTS.names())
    _enum(properties["ObservablesConfig"]["names"], OBSERVABLES.names())
    _enum(
        properties["PretrainedConfig"]["statistics"],
        [
            name
            for name in OBSERVABLES
            if not OBSERVABLES[name].dims and OBSERVABLES[name].d is None
        ],
    )
    for kind, model in KINDS.items():
        figures = [name for name in FIGURES if FIGURES[name].experiment == kind]
        _enum(properties[model.__name__]["figures"], figures)
    tasks = []
    for kind in TASKS:
        # A task's schema is plain pydantic, whose floats also take numeric strings.
        part = _numeric_strings(
            TASKS[kind].schema.model_json_schema(ref_template="#/$defs/{model}")
        )
        definitions.update(part.pop("$defs", {}))
        part["properties"] = {
            "kind": {"const": kind, "description": f"the task: {TASKS[kind].description}"},
            **part["properties"],
        }
        part["required"] = ["kind", *part.get("required", [])]
        part["title"] = f"task {kind}"
        tasks.append(part)
    definitions["TaskConfig"] = {"title": "TaskConfig", "oneOf": tasks}


_ANNOTATIONS = ("title", "description", "default", "deprecated", "examples")


def _numeric_strings(node: Any) -> Any:
    """`node` with every number schema widened to a number or a string that `float` reads
    (the loader reads "1e-3", a string in YAML 1.1, as a number)."""
    if isinstance(node, list):
        return [_numeric_strings(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "number":
        inner = {k: v for k, v in node.items() if k not in _ANNOTATIONS}
        outer = {k: v for k, v in node.items() if k in _ANNOTATIONS}
        return {**_number_forms(inner), **outer}
    return {
        key: value if key in ("default", "const", "enum", "examples") else _numeric_strings(value)
        for key, value in node.items()
    }


def _enum(schema: dict, names: list[str]) -> None:
    """Restrict every string in `schema` (one name, or each name of a list) to `names`."""
    if schema.get("type") == "string":
        schema["enum"] = list(names)
    for key in ("anyOf", "oneOf"):
        for part in schema.get(key, ()):
            _enum(part, names)
    if isinstance(schema.get("items"), dict):
        _enum(schema["items"], names)


# --- reading configs -----------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = (), *, smoke: bool = False):
    """Read a YAML config, apply its `smoke:` overrides (if `smoke`) then `overrides`, validate.
    Raises `ConfigError` (never a traceback from inside) on any bad input."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (or is not a file).")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(
                f"config file {str(path)!r} is {path.stat().st_size} bytes; configs are "
                f"limited to {MAX_YAML_BYTES}"
            )
        raw = load_yaml(path.read_text(), f"config file {str(path)!r}")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return config_from_dict(raw, overrides, smoke=smoke, default_name=path.stem)


def config_from_dict(
    raw: Any,
    overrides: Sequence[str] = (),
    *,
    smoke: bool = False,
    default_name: str = "experiment",
):
    """Validate a config mapping (after `smoke:` and `key=value` overrides) into a
    `SimulationConfig`, `TheoryConfig` or `FitConfig`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a config must be a YAML mapping at the top level, got {raw!r}. Fix: start from "
            "one of configs/*.yaml."
        )
    raw = dict(raw)
    kind = _kind_of(raw)
    smoke_overrides = raw.get("smoke") or {}
    if not isinstance(smoke_overrides, Mapping):
        raise ConfigError(
            "config key `smoke`: must map key paths to values, e.g. {sweep.starts: 4}, got "
            f"{smoke_overrides!r}."
        )
    try:
        bounded_free_form(smoke_overrides)
    except ValueError as err:
        raise ConfigError(f"config key `smoke`: {err}.") from None
    if smoke:
        raw = apply_overrides(
            raw, [f"{key}={json.dumps(value)}" for key, value in smoke_overrides.items()], kind
        )
    raw = apply_overrides(raw, list(overrides), _kind_of(raw))
    kind = _kind_of(raw)
    try:
        config = kind.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, raw)) from None
    if config.name is None:
        config = config.model_copy(update={"name": default_name})
    config._smoke_run = bool(smoke)
    return config


def import_fields(config):
    """The config validated again with the `module:Class` it names imported (the checks that
    need the class: its parameters, placements, state), or the config itself if it names no
    import path. Called by `run_experiment` only, after the config validated without imports.
    Refused when TRANSFORMER_FLOWS_NO_IMPORTS is set."""
    model = getattr(config, "model", None)
    if model is None or not FIELDS.is_import_path(getattr(model, "field", None)):
        return config
    try:
        with allow_imports():
            validated = type(config).model_validate(config.resolved())
    except ValidationError as err:
        raise ConfigError(_explain(err, config.resolved())) from None
    validated._smoke_run = config.smoke_run
    return validated


def _explain(error: ValidationError, raw: Mapping) -> str:
    """Every pydantic error as: key path, the value given, what is wrong/allowed, the fix."""
    lines = []
    for item in error.errors(include_url=False):
        path = _location(item["loc"])
        message = item["msg"].removeprefix("Value error, ").rstrip(".")
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _location(item["loc"][:-1])
            allowed = _allowed_keys(raw, item["loc"][:-1])
            lines.append(
                f"config key `{path}`: unknown key. Allowed keys "
                f"{'here' if parent == '<top level>' else 'in ' + parent}: {allowed}. Fix: "
                "correct the spelling or remove it."
            )
            continue
        if kind == "missing":
            lines.append(
                f"config key `{path}`: is required. Fix: add it to the config or pass "
                f"`{path}=VALUE`."
            )
            continue
        value = item.get("input")
        leading = _LEADING_KEY.match(message)
        if leading and kind == "value_error":
            # A check across keys names the key it is about first ("params.gain: ...").
            relative, message = leading.groups()
            path = relative if path == "<top level>" else f"{path}.{relative}"
            value = _lookup(raw, path)
        elif _is_section(raw, item["loc"]):
            # A check across the keys of a section: its message names them and the fix.
            lines.append(f"config section `{path}`: {message}.")
            continue
        shown = "" if value is _MISSING else f" got {value!r};"
        lines.append(
            f"config key `{path}`:{shown} {message}. Fix: edit `{path}` in the config or "
            f"override it with `{path}=VALUE`."
        )
    head = "invalid config" + (f" ({len(lines)} errors)" if len(lines) > 1 else "")
    return head + ":\n  " + "\n  ".join(lines)


_LEADING_KEY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): (.*)$", re.DOTALL)
_MISSING = object()


def _lookup(raw: Any, path: str) -> Any:
    """The value at a dotted key path of the raw config (_MISSING if absent)."""
    node = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_section(raw: Mapping, loc: Sequence) -> bool:
    """Whether `loc` names a section (a model) rather than a value."""
    if not loc:
        return True
    model = _kind_of(raw)
    for part in loc:
        if isinstance(part, int) or model is None:
            return False
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = _model_in(field.annotation)
    return model is not None


def _allowed_keys(raw: Mapping, loc: Sequence) -> list[str]:
    model = _kind_of(raw)
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        annotation = getattr(field, "annotation", None)
        model = _model_in(annotation)
        if model is None:
            return []
    return sorted(model.model_fields)
