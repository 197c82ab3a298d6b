"""`key.path=value` overrides of a config mapping, checked against the schema: the one
override parser of every command (and of `smoke:` sections). The last key may carry indexes,
`sweep.beta[2]=5.0` or `task.anchors[0][2]=1`, which replace one entry of a list written in
the config (the form the config errors suggest)."""

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ._errors import ConfigError
from ._yaml import load_yaml


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
        value = load_yaml(raw, f"override {text!r}: the value")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return tuple(part.strip() for part in key.split(".")), value


_INDEXED = re.compile(r"^(?P<key>[^\[\]]+)(?P<indexes>(\[-?\d+\])+)$")


def _split_indexes(text: str, part: str) -> tuple[str, list[int]]:
    """'beta[2]' -> ('beta', [2]); 'beta' -> ('beta', []); malformed brackets: ConfigError."""
    if "[" not in part and "]" not in part:
        return part, []
    match = _INDEXED.match(part)
    if match is None:
        raise ConfigError(
            f"override {text!r}: {part!r} is not a key or key[index] (indexes are integers, "
            "e.g. sweep.beta[2]=5.0)."
        )
    return match["key"].strip(), [int(i) for i in re.findall(r"-?\d+", match["indexes"])]


def _set_entry(text: str, where: str, container, indexes: list[int], value) -> None:
    """container[i0][i1]... = value, in place, for lists written in the config."""
    for depth, index in enumerate(indexes):
        shown = where + "".join(f"[{i}]" for i in indexes[:depth])
        if not isinstance(container, list):
            held = "is not set in the config" if container is None else f"holds {container!r}"
            raise ConfigError(
                f"override {text!r}: {shown!r} {held}, not a list; an index replaces one entry "
                f"of a list written in the config. Fix: set it whole, e.g. {shown}=[...]."
            )
        if not -len(container) <= index < len(container):
            raise ConfigError(
                f"override {text!r}: index {index} is out of range for {shown!r}, a list of "
                f"{len(container)} entries (indexes 0 to {len(container) - 1})."
            )
        if depth == len(indexes) - 1:
            container[index] = value
        else:
            container = container[index]


# Below a free-form mapping (model.params, sweep.params, smoke, a task's keys) any key goes.
_FREE = object()


def _child(model, part: str):
    """What `part` is under `model`: the model class of a section, `_FREE`, or None (a value).
    KeyError if the schema has no such key there."""
    if model is _FREE or model.model_config.get("extra") == "allow":
        return _FREE  # a section open to any key (a fit task: its keys depend on its kind)
    annotation = model.model_fields[part].annotation
    section = _model_in(annotation)
    if section is not None:
        return section
    return _FREE if _holds_dict(annotation) else None


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (X, X | None, Annotated[X, ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _holds_dict(annotation) -> bool:
    """dict[...], or a union/Annotated with a dict[...] in it."""
    if getattr(annotation, "__origin__", None) is dict:
        return True
    return any(_holds_dict(argument) for argument in getattr(annotation, "__args__", ()))


def _indexed(text: str, path: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
    """Split the indexes off the last key; an index on an earlier key is refused."""
    parts = [_split_indexes(text, part) for part in path]
    for key, indexes in parts[:-1]:
        if indexes:
            raise ConfigError(
                f"override {text!r}: only the last key may carry an index ({key!r} does). Fix: "
                "set that section's list whole."
            )
    return tuple(key for key, _ in parts), parts[-1][1]


def apply_overrides(config: Mapping, overrides: Sequence[str], kind: type[BaseModel]) -> dict:
    """A copy of `config` with each `key.path=value` applied. Key paths are checked against
    the schema of `kind` (a typo fails, naming the keys allowed there); missing sections are
    created; `null` removes the key, restoring its default."""
    result = copy.deepcopy(dict(config))
    for text in overrides:
        path, value = parse_override(text)
        path, indexes = _indexed(text, path)
        node: dict = result
        model = kind
        for depth, part in enumerate(path):
            where = ".".join(path[: depth + 1])
            try:
                child = _child(model, part)
            except KeyError:
                raise ConfigError(
                    f"override {text!r}: unknown key {where!r}; allowed keys here: "
                    f"{sorted(model.model_fields)}."
                ) from None
            if depth == len(path) - 1:
                if indexes:
                    if value is None:
                        raise ConfigError(
                            f"override {text!r}: null cannot remove one entry of a list. Fix: "
                            f"set the list whole, e.g. {where}=[...]."
                        )
                    _set_entry(text, where, node.get(part), indexes, value)
                elif value is None:
                    node.pop(part, None)
                else:
                    node[part] = value
                break
            if child is None:
                raise ConfigError(
                    f"override {text!r}: {where!r} is a value, not a section; set it whole, "
                    f"e.g. {where}=VALUE."
                )
            existing = node.get(part)
            if existing is not None and not isinstance(existing, Mapping):
                raise ConfigError(
                    f"override {text!r}: {where!r} holds {existing!r}, not a section."
                )
            node[part] = dict(existing or {})
            node, model = node[part], child
    return result
