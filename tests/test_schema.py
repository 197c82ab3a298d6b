"""`transformer-flows schema` describes what the loader accepts, for editors: every shipped
config validates against it (jsonschema, Draft 2020-12), every property has a description,
only standard JSON Schema keywords appear, and a config the loader refuses for a type reason
the schema refuses too."""

import copy
import math
import re
from pathlib import Path

import jsonschema
import pytest

from transformer_flows.experiment import ConfigError, config_from_dict, json_schema
from transformer_flows.experiment._schema import NUMBER_STRING
from transformer_flows.experiment._yaml import load_yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

# The keywords of the JSON Schema Draft 2020-12 vocabularies (core, applicator, unevaluated,
# validation, format, content, meta-data).
STANDARD = frozenset(
    """$schema $id $ref $defs $anchor $dynamicRef $dynamicAnchor $vocabulary $comment
    allOf anyOf oneOf not if then else dependentSchemas prefixItems items contains properties
    patternProperties additionalProperties propertyNames unevaluatedItems unevaluatedProperties
    type enum const multipleOf maximum exclusiveMaximum minimum exclusiveMinimum maxLength
    minLength pattern maxItems minItems uniqueItems maxContains minContains maxProperties
    minProperties required dependentRequired format contentEncoding contentMediaType
    contentSchema title description default deprecated readOnly writeOnly examples""".split()
)
# Keys whose values are maps from names to schemas, and keys whose values are data.
NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "dependentSchemas")
DATA = ("default", "const", "enum", "examples", "required", "dependentRequired")
# The one extension: the registered names at the top level (ignored by validators).
EXTENSIONS = ("x-registered-names",)


@pytest.fixture(scope="module")
def schema():
    return json_schema()


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def _subschemas(node, path=""):
    """(path, schema) of every schema in `node`, walking the applicator keywords."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _subschemas(item, f"{path}/{index}")
        return
    if not isinstance(node, dict):
        return
    yield path, node
    for key, value in node.items():
        if key in DATA or (path == "" and key in EXTENSIONS):
            continue
        if key in NAMED_SCHEMAS:
            for name, sub in value.items():
                yield from _subschemas(sub, f"{path}/{key}/{name}")
        else:
            yield from _subschemas(value, f"{path}/{key}")


def _errors(validator, config) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)
    ]


def test_schema_is_a_valid_draft_2020_12_schema(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_only_standard_keywords(schema):
    unknown = [
        f"{path}/{key}"
        for path, node in _subschemas(schema)
        for key in node
        if key not in STANDARD and not (path == "" and key in EXTENSIONS)
    ]
    assert not unknown, unknown  # e.g. pydantic's ge/gt/le/lt leaking out


def test_every_property_has_a_description(schema):
    properties = [
        f"{path}/{name}"
        for path, node in _subschemas(schema)
        for name in node.get("properties", {})
    ]
    missing = [
        f"{path}/{name}"
        for path, node in _subschemas(schema)
        for name, prop in node.get("properties", {}).items()
        if not prop.get("description", "").strip()
    ]
    assert len(properties) > 150  # every kind, section and task is walked
    assert not missing, missing


def test_descriptions_say_short_defaults(schema):
    solver = schema["$defs"]["SolverConfig"]["properties"]
    assert solver["rtol"]["description"].endswith("Default: 1e-06.")
    assert solver["max_steps"]["default"] == 16384
    assert solver["max_steps"]["description"].endswith("Default: 16384.")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path, validator):
    raw = load_yaml(path.read_text(), str(path))
    assert not _errors(validator, raw)
    # so does its smoke form
    config_from_dict(raw, smoke=True, default_name=path.stem)


def _doc_configs():
    """The YAML blocks of README.md and docs/*.md that the loader accepts as configs."""
    blocks = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL):
            try:
                raw = load_yaml(block, page.name)
                config_from_dict(raw)
            except (ConfigError, ValueError):
                continue  # a fragment, or an example of a refused config
            blocks.append((page.name, raw))
    return blocks


def test_complete_doc_examples_validate(validator):
    blocks = _doc_configs()
    assert any(name == "sweeps.md" for name, _ in blocks)
    for name, raw in blocks:
        assert not _errors(validator, raw), name


BASE = {
    "model": {"field": "SA", "n": 8, "d": 3},
    "sweep": {"beta": [1.0], "starts": 2},
    "time": {"t1": 1.0, "num": 3},
}
FIT = load_yaml((ROOT / "configs" / "fit_two_clusters.yaml").read_text(), "fit")


def _with(base: dict, path: str, value) -> dict:
    config = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


ACCEPTED = [
    ("model.n", 16),
    ("model.n", [8, 16]),
    ("model.d", [2, 3]),
    ("model.weights", "ginibre:ginibre"),
    ("model.weights", ["identity", "goe:wishart"]),
    ("model.initial", "hemisphere"),
    ("model.initial", ["sphere", "hemisphere"]),
    ("model.placement", ["post_ln", "pre_ln"]),
    ("sweep.beta", 2),
    ("sweep.beta", [0.5, 1.0, 2.0]),
    ("sweep.beta", {"start": 0.5, "stop": 4.0, "num": 8}),
    ("sweep.beta", {"start": "1e-1", "stop": 1, "num": 1}),
    ("sweep.beta", "1e-3"),  # YAML 1.1 reads 1e-3 as a string
    ("sweep.tolerance", "1e-4"),
    ("sweep.tolerance", [1e-4, 1e-6]),
    ("sweep.chunk_size", 64),
    ("solver.rtol", "1e-7"),
    ("observables.names", "energy"),
    ("figures", "phase_diagram"),
    ("plot.snapshot_times", 0.5),
    ("plot.snapshot_times", {"start": 0, "stop": 1, "num": 3}),
]


FIT_ACCEPTED = [
    ("task.spread", "1e-1"),  # a task's plain pydantic float reads numeric strings too
    ("task.anchors", {"random": 2, "seed": 1}),
]


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [(BASE, *case) for case in ACCEPTED] + [(FIT, *case) for case in FIT_ACCEPTED],
    ids=lambda x: x if isinstance(x, str) else repr(x)[:30],
)
def test_every_loader_form_validates(base, path, value, validator):
    config = _with(base, path, value)
    config_from_dict(config)  # the loader accepts it ...
    assert not _errors(validator, config)  # ... and so does the schema


# Configs the loader refuses for a reason the schema can express (types, bounds, names, keys).
REFUSED = [
    (BASE, "model.n", "sixteen"),
    (BASE, "model.n", 1),
    (BASE, "model.n", True),
    (BASE, "model.n", 2.5),
    (BASE, "model.n", []),
    (BASE, "model.d", [3, "x"]),
    (BASE, "model.field", "SAA"),
    (BASE, "model.weights", "wishart:wishart"),
    (BASE, "model.initial", "cube"),
    (BASE, "model.params", [1]),
    (BASE, "sweep.beta", "abc"),
    (BASE, "sweep.beta", []),
    (BASE, "sweep.beta", [1.0, "x"]),
    (BASE, "sweep.beta", True),
    (BASE, "sweep.beta", {"start": 0, "stop": 1}),
    (BASE, "sweep.beta", {"start": 0, "stop": 1, "num": 0}),
    (BASE, "sweep.beta", {"start": 0, "stop": 1, "num": 2.5}),
    (BASE, "sweep.beta", {"start": 0, "stop": 1, "num": 3, "step": 1}),
    (BASE, "sweep.starts", 0),
    (BASE, "sweep.seed", -1),
    (BASE, "sweep.seed", 2**63),
    (BASE, "sweep.chunk_size", "big"),
    (BASE, "sweep.memory_budget_mb", 0),
    (BASE, "time.t1", 0),
    (BASE, "time.t1", "soon"),
    (BASE, "time.num", 1),
    (BASE, "solver.rtol", 0),
    (BASE, "solver.rtol", "1e-3x"),
    (BASE, "solver.name", "rk5"),
    (BASE, "solver.max_steps", 1.5),
    (BASE, "solver.rtoll", 1e-3),
    (BASE, "observables.delta", 2),
    (BASE, "observables.names", ["nope"]),
    (BASE, "precision", "float16"),
    (BASE, "experiment", "simulate"),
    (BASE, "modle", {}),
    (BASE, "figures", ["landscape"]),  # a theory figure
    (BASE, "plot.movie_frames", 0),
    # repeated values (uniqueItems)
    (BASE, "model.n", [8, 8]),
    (BASE, "model.initial", ["sphere", "sphere"]),
    (BASE, "model.weights", ["identity", "identity"]),
    (BASE, "sweep.beta", [1, 1.0]),
    (BASE, "sweep.tolerance", [1e-4, 1e-4]),
    (BASE, "observables.names", ["energy", "energy"]),
    (BASE, "figures", ["phase_diagram", "phase_diagram"]),
    (FIT, "train.steps", -1),
    (FIT, "train.learning_rate", 0),
    (FIT, "train.optimizer", "lbfgs"),
    (FIT, "flow.adjoint", "forward"),
    (FIT, "model.d", 1),
    (FIT, "task.kind", "nope"),
    (FIT, "task.n", 1),
    (FIT, "task.anchors", {"random": 0}),
    (FIT, "task.extra", 1),
]


@pytest.mark.parametrize(
    ("base", "path", "value"), REFUSED, ids=lambda x: x if isinstance(x, str) else repr(x)[:20]
)
def test_type_errors_are_refused_by_the_loader_and_the_schema(base, path, value, validator):
    config = _with(base, path, value)
    with pytest.raises(ConfigError):
        config_from_dict(config)
    assert _errors(validator, config), f"the schema accepts {path}={value!r}"


def _reads_as_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@pytest.mark.parametrize(
    "text",
    [
        "1",
        "-2",
        "+3.5",
        "1e-3",
        "1E+3",
        ".5",
        "5.",
        "1.e5",
        " 2 ",
        "1_000",
        "1_0.5e1_0",
        "",
        ".",
        "e5",
        "1e",
        "1_",
        "_1",
        "1__0",
        "0x10",
        "1e-3x",
        "inf",
        "-Infinity",
        "nan",
        "1,5",
        "1 2",
        "--1",
    ],
)
def test_number_string_pattern_is_what_float_reads(text):
    assert bool(re.search(NUMBER_STRING, text)) == _reads_as_number(text)


def _old_fit():
    fit = copy.deepcopy(FIT)
    fit["model"] = {"kind": "sa", "dim": 3, "beta": 1.0}
    fit["flow"] = {"horizon": 5.0, "solver": "tsit5", "rtol": 1e-3, "dt0": None, "max_steps": 99}
    fit.pop("solver")
    return fit


@pytest.mark.parametrize(
    "config",
    [_with(BASE, "solver", {"method": "adaptive", "scheme": "bosh3"}), _old_fit()],
    ids=["old_solver", "old_fit"],
)
def test_configs_written_before_issue_9_validate_with_deprecated_keys(config, schema, validator):
    config_from_dict(config)
    assert not _errors(validator, config)
    solver = schema["$defs"]["SolverConfig"]["properties"]
    assert solver["method"]["deprecated"] and not solver["name"].get("deprecated")


def test_a_fit_model_needs_d_or_the_old_dim(validator):
    fit = _with(FIT, "model", {"field": "SA", "params": {"beta": 1.0}})
    with pytest.raises(ConfigError):
        config_from_dict(fit)
    assert _errors(validator, fit)
