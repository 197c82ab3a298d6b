"""Which keys of two configs differ, for the message that refuses to resume a run under a
changed config ("model.n: 16 → 32")."""

from collections.abc import Mapping

from ._yaml import load_yaml

MAX_SHOWN = 8


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, Mapping) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(old_text: str, new_text: str) -> list[str]:
    """`key: old → new` for every dotted key whose value differs between two YAML configs
    (a key only one of them has shows `(absent)` on the other side); [] if either does not
    parse as a mapping."""
    try:
        old, new = load_yaml(old_text, "stored config"), load_yaml(new_text, "this config")
    except ValueError:
        return []
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return []
    old, new = _flatten(old), _flatten(new)
    missing = object()
    lines = []
    for key in dict.fromkeys([*old, *new]):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            shown = ["(absent)" if v is missing else _short(v) for v in (before, after)]
            lines.append(f"{key}: {shown[0]} → {shown[1]}")
    return lines


def describe_differences(old_text: str, new_text: str) -> str:
    """' It differs in: a: 1 → 2; b: …' (at most MAX_SHOWN keys), or '' if none is found."""
    lines = config_differences(old_text, new_text)
    if not lines:
        return ""
    more = f"; and {len(lines) - MAX_SHOWN} more" if len(lines) > MAX_SHOWN else ""
    return f" It differs in: {'; '.join(lines[:MAX_SHOWN])}{more}."


def _short(value, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
