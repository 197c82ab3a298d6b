"""`key.path=value` overrides of a config mapping, checked against the schema: the one
override parser of every command (and of `smoke:` sections)."""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from ._schema import ConfigError, TaskConfig, _model_in


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """'a.b.c=1e-3' -> (('a', 'b', 'c'), 0.001); the value is parsed as YAML (`null` restores
    the default)."""
    key, sep, raw = str(text).partition("=")
    if not sep or not key.strip() or any(not part.strip() for part in key.split(".")):
        raise ConfigError(
            f"override {text!r} must look like key.path=value, e.g. solver.rtol=1e-8."
        )
    if not raw.strip():
        raise ConfigError(
            f"override {text!r} has no value. Fix: give one ({key.strip()}=VALUE), or "
            f"{key.strip()}=null to restore the default."
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML.") from None
    return tuple(part.strip() for part in key.split(".")), value


def _section_model(model: type[BaseModel] | None, part: str, raw_node: Any):
    """(known?, the model class of `part` or None if it is a plain value or a free mapping)."""
    if model is None:
        return True, None  # inside a free mapping (params, smoke): any key
    if model is TaskConfig:
        return True, None  # a task's keys depend on its kind: checked by validation
    fields = model.model_fields
    if part not in fields:
        return False, None
    annotation = fields[part].annotation
    return True, _model_in(annotation)


def apply_overrides(config: Mapping, overrides: Sequence[str], kind: type[BaseModel]) -> dict:
    """A copy of `config` with each `key.path=value` applied. Key paths are checked against
    the schema of `kind` (a typo fails, naming the keys allowed there); missing sections are
    created; `null` removes the key, restoring its default."""
    result = copy.deepcopy(dict(config))
    for text in overrides:
        path, value = parse_override(text)
        node: dict = result
        model: type[BaseModel] | None = kind
        free = False  # below a free-form mapping (e.g. model.params): any key is allowed
        for depth, part in enumerate(path):
            where = ".".join(path[: depth + 1])
            if not free:
                known, child = _section_model(model, part, node.get(part))
                if not known:
                    allowed = sorted(model.model_fields)
                    raise ConfigError(
                        f"override {text!r}: unknown key {where!r}; allowed keys here: {allowed}."
                    )
                free = (
                    child is None
                    and depth < len(path) - 1
                    and (model is TaskConfig or _is_mapping_field(model, part))
                )
                if child is None and depth < len(path) - 1 and not free:
                    raise ConfigError(
                        f"override {text!r}: {where!r} is a value, not a section; set it "
                        f"whole, e.g. {where}=VALUE."
                    )
                model = child
            if depth == len(path) - 1:
                if value is None:
                    node.pop(part, None)
                else:
                    node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    if node.get(part) is not None and not isinstance(node.get(part), Mapping):
                        raise ConfigError(
                            f"override {text!r}: {where!r} holds {node[part]!r}, not a section."
                        )
                    node[part] = dict(node.get(part) or {})
                node = node[part]
    return result


def _is_mapping_field(model: type[BaseModel] | None, part: str) -> bool:
    if model is None or model is TaskConfig:
        return True
    annotation = model.model_fields[part].annotation
    origin = getattr(annotation, "__origin__", None)
    if origin is dict:
        return True
    return any(getattr(a, "__origin__", None) is dict for a in getattr(annotation, "__args__", ()))
