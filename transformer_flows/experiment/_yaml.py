"""Reading YAML as data: safe types only, no anchors or aliases, bounded size.

A YAML alias (`*name`) repeats a node without copying it in the text, so a 1 KB file can
expand to gigabytes when it is saved back or walked (a "billion laughs"). Configs never need
one, so aliases are refused with the line they are on; texts over `MAX_YAML_BYTES` are refused
before parsing. The free-form sections of a config (`smoke`, `model.params`,
`model.placement_params`) are bounded in `bounded_free_form`.
"""

from typing import Any

import yaml

MAX_YAML_BYTES = 1_000_000
# Free-form sections: at most this many values (keys, items, scalars) and this many
# characters of strings in all.
MAX_FREE_FORM_NODES = 1_000
MAX_FREE_FORM_CHARACTERS = 100_000


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (and so merge keys `<<: *name`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: the alias *{event.anchor} is refused: YAML "
                "anchors and aliases are not allowed in configs (an alias repeats a node "
                "without copying it, so a small file can expand without bound). Fix: write "
                "the values out in full"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str) -> Any:
    """The data in YAML `text` (safe types only, no aliases); ValueError naming `where` on
    anything else."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(
            f"{where} is {len(text)} characters long; configs are limited to {MAX_YAML_BYTES} "
            "(move long data, e.g. texts, into a file the config names)."
        )
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {err}") from None


def bounded_free_form(value: Any) -> Any:
    """`value` if it holds at most MAX_FREE_FORM_NODES values and MAX_FREE_FORM_CHARACTERS
    characters of strings (shared references count each time: bounded, never expanded)."""
    nodes = characters = 0
    stack = [value]
    while stack:
        item = stack.pop()
        nodes += 1
        if isinstance(item, str):
            characters += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        if nodes > MAX_FREE_FORM_NODES or characters > MAX_FREE_FORM_CHARACTERS:
            raise ValueError(
                f"holds more than {MAX_FREE_FORM_NODES} values or {MAX_FREE_FORM_CHARACTERS} "
                "characters; free-form sections take a few scalar settings"
            )
    return value
