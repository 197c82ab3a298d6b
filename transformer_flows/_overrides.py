"""`key.path=value` command-line overrides for nested YAML configs."""

import copy
from collections.abc import Mapping, Sequence

import yaml


def parse_override(text: str) -> tuple[tuple[str, ...], object]:
    """'a.b.c=1e-3' -> (('a', 'b', 'c'), 0.001); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"Override {text!r} must look like key.path=value, e.g. solver.rtol=1e-8."
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"Override {text!r}: the value {raw!r} is not valid YAML.") from err
    return tuple(part.strip() for part in key.split(".")), value


def apply_overrides(config: Mapping, overrides: Sequence[str]) -> dict:
    """Return a copy of `config` with each `key.path=value` applied.

    Only existing keys can be overridden (a typo should fail, not add a silent new key);
    the error names the path and the keys that exist at that level.
    """
    result = copy.deepcopy(dict(config))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path):
            where = ".".join(path[: depth + 1])
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(
                    f"Override {text!r}: unknown key {where!r}; allowed keys here: {known}."
                )
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node[part]
    return result
