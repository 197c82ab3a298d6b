"""mkdocs hooks of the docs site (`mkdocs.yml`: `hooks: [docs/hooks.py]`).

Three jobs, all at build time, so that nothing on the site is a hand-made copy:

1. The repository's root pages (README.md, REPRODUCTION.md, BENCHMARKS.md) become site pages
   (index.md, reproduction.md, benchmarks.md) without moving them: their text is read from the
   root at every build.
2. Links are rewritten from repository paths to site paths, so that one Markdown source reads
   right both on GitHub and on the site: `docs/models.md` in the README becomes `models.md`,
   `../REPRODUCTION.md` in docs/ becomes `reproduction.md`, a link to `configs/` becomes the
   config reference. A link to a path that does not exist is left alone, so that `--strict`
   still reports it.
3. The config reference (reference/config.md) is rendered from
   `transformer_flows.experiment.json_schema()`, the same schema that `transformer-flows schema`
   prints and the loader validates against.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Repository path -> site page (a src_uri under docs/).
ROOT_PAGES = {
    "README.md": "index.md",
    "REPRODUCTION.md": "reproduction.md",
    "BENCHMARKS.md": "benchmarks.md",
}
CONFIG_REFERENCE = "reference/config.md"
# Repository paths without a page of their own, and the page that documents them.
PATH_PAGES = {"configs": CONFIG_REFERENCE}

# The repository path each generated page's text comes from (its links are relative to it).
_ORIGIN: dict[str, str] = {}

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^(```|~~~)")


def on_config(config: Any) -> Any:
    # The same Markdown extension object reaches mkdocstrings, which shares this list.
    config.markdown_extensions.append(_markdown_extension())
    _add_new_guides(config.nav or [])
    return config


def _add_new_guides(nav: list) -> None:
    """Append every docs/*.md that the nav does not list to its "Guides" section, titled by
    its first heading, so that a guide added on another branch is on the site without an edit
    of mkdocs.yml (pages in subdirectories must be listed: --strict reports them)."""
    listed: set[str] = set()

    def collect(items: Any) -> None:
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                for value in item.values():
                    collect(value)
            elif isinstance(item, str):
                listed.add(item)

    collect(nav)
    guides = next((e["Guides"] for e in nav if isinstance(e, dict) and "Guides" in e), None)
    if guides is None:
        return
    for path in sorted((ROOT / "docs").glob("*.md")):
        if path.name not in listed and path.name not in ROOT_PAGES.values():
            title = next(
                (
                    line[2:].strip()
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if line.startswith("# ")
                ),
                path.stem,
            )
            guides.append({title: path.name})


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for repo_path, page in ROOT_PAGES.items():
        source = ROOT / repo_path
        files.append(File.generated(config, page, content=source.read_text(encoding="utf-8")))
        _ORIGIN[page] = repo_path
    files.append(File.generated(config, CONFIG_REFERENCE, content=config_reference()))
    _ORIGIN[CONFIG_REFERENCE] = "docs/" + CONFIG_REFERENCE
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    src_uri = page.file.src_uri
    origin = _ORIGIN.get(src_uri, "docs/" + src_uri)
    return rewrite_links(markdown, origin, src_uri)


def rewrite_links(markdown: str, origin: str, src_uri: str) -> str:
    """Rewrite the relative link targets of `markdown` (read from repository path `origin`,
    served as the site page `src_uri`) from repository paths to site paths; code blocks are
    left as they are."""
    origin_dir = posixpath.dirname(origin)
    page_dir = posixpath.dirname(src_uri)

    def replace(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(origin_dir, path))
        site_path = _site_path(repo_path)
        if site_path is None:
            return match.group(0)
        new = posixpath.relpath(site_path, page_dir or ".")
        return f"{match.group(1)}{new}{hash_}{anchor}{match.group(3)}"

    out, in_fence = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
        out.append(line if in_fence else _LINK.sub(replace, line))
    return "".join(out)


def _site_path(repo_path: str) -> str | None:
    if repo_path in ROOT_PAGES:
        return ROOT_PAGES[repo_path]
    if repo_path in PATH_PAGES:
        return PATH_PAGES[repo_path]
    if repo_path.startswith("docs/") and (ROOT / repo_path).exists():
        return repo_path.removeprefix("docs/")
    return None


# ---------------------------------------------------------------- GitHub-like Markdown

# HTML tags that the pages may mean as HTML; any other `<letter...` is text.
_HTML_TAGS = "a|abbr|b|br|code|del|details|div|em|i|img|kbd|p|s|span|strong|sub|summary|sup|u"

_LIST_ITEM = re.compile(r"^(?:[-*+] |1[.)] )")
_NOT_PARAGRAPH = re.compile(r"^(?:\s|[-*+] |\d+[.)] |\||#|>|$)")


def separate_lists(lines: list[str]) -> list[str]:
    """Insert a blank line between a paragraph line and a list item that follows it.

    GitHub (CommonMark) lets a list interrupt a paragraph, Python-Markdown does not, and the
    docstrings and guides are written for the former ("**Arguments:**" followed directly by
    "- `x`: ..."). Only unindented lines are touched; code blocks are already stashed away
    when this runs.
    """
    out: list[str] = []
    for line in lines:
        if _LIST_ITEM.match(line) and out and not _NOT_PARAGRAPH.match(out[-1]):
            out.append("")
        out.append(line)
    return out


def _markdown_extension():
    """Two differences from GitHub that would garble the pages: lists after a paragraph line
    (`separate_lists`), and inner products written `<x_i, x_j>` or placeholders such as
    `<name>`, which Python-Markdown takes for HTML tags and drops from the page (GitHub shows
    them: they are not valid tags). Such a `<` becomes text; code spans, code blocks, autolinks
    `<https://...>` and the tags in `_HTML_TAGS` are left alone."""
    from markdown.extensions import Extension
    from markdown.inlinepatterns import InlineProcessor
    from markdown.preprocessors import Preprocessor

    class _Separate(Preprocessor):
        def run(self, lines: list[str]) -> list[str]:
            return separate_lists(lines)

    class _LessThan(InlineProcessor):
        def handleMatch(self, match, data):  # noqa: N802 (Markdown's API)
            return "<", match.start(0), match.end(0)  # text, escaped on output

    class _Extension(Extension):
        def extendMarkdown(self, md) -> None:  # noqa: N802 (Markdown's API)
            # After the fenced-code preprocessors (priority 25+), so code is left alone.
            md.preprocessors.register(_Separate(md), "list_after_paragraph", 5)
            # After code spans and autolinks (120), before raw inline HTML (90).
            pattern = rf"<(?=/?[A-Za-z])(?!/?(?:{_HTML_TAGS})[\s>/])"
            md.inlinePatterns.register(_LessThan(pattern, md), "less_than_as_text", 95)

    return _Extension()


# ---------------------------------------------------------------- config reference

_KIND_NAMES = {
    "SimulationConfig": "simulation",
    "TheoryConfig": "theory",
    "FitConfig": "fit",
    "PretrainedConfig": "pretrained",
}
# JSON Schema (and pydantic's own) constraint keywords, shown as maths.
_CONSTRAINTS = {
    "exclusiveMinimum": "> {}",
    "minimum": "≥ {}",
    "exclusiveMaximum": "< {}",
    "maximum": "≤ {}",
    "gt": "> {}",
    "ge": "≥ {}",
    "lt": "< {}",
    "le": "≤ {}",
    "minItems": "≥ {} items",
    "maxItems": "≤ {} items",
    "minLength": "length ≥ {}",
    "maxLength": "length ≤ {}",
    "pattern": "matches `{}`",
}


def config_reference() -> str:
    """The config reference page, rendered from `transformer_flows.experiment.json_schema()`."""
    from transformer_flows.experiment import json_schema

    schema = json_schema()
    defs = schema.get("$defs", {})
    lines = [
        "# Config reference",
        "",
        "Generated at every docs build from `transformer_flows.experiment.json_schema()`, the",
        "schema that `transformer-flows schema` prints; the loader validates every config against",
        "the same declarations, so this page cannot drift from the code. The workflow,",
        "overrides and examples are in the [sweeps guide](../sweeps.md) and the",
        "[fitting guide](../fitting.md).",
        "",
        "Each config file is one experiment kind, chosen by its top-level key `experiment`",
        "(`simulation` when absent). Keys are written as the dotted paths that command-line",
        "overrides use (`transformer-flows run CONFIG --out DIR key.path=value`).",
        "",
    ]
    lines += _shipped_configs()
    for ref in schema.get("oneOf", schema.get("anyOf", [])):
        name = _ref_name(ref)
        if name is None or name not in defs:
            continue
        kind = _KIND_NAMES.get(name, name)
        lines += [f"## `{kind}` ({name})", ""]
        if defs[name].get("description"):
            lines += [_one_line(defs[name]["description"]), ""]
        lines += [
            "| key | type | default | constraints | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += _rows(defs[name], defs, prefix="", seen=(name,))
        lines.append("")
    registered = schema.get("x-registered-names", {})
    if registered:
        lines += [
            "## Registered names",
            "",
            "The names the registries of `transformer_flows.experiment` hold when the schema is",
            "generated (a config may register more with `module:Class` entries):",
            "",
            "| registry | names |",
            "| --- | --- |",
        ]
        for registry, names in registered.items():
            lines.append(f"| `{registry}` | {', '.join(f'`{n}`' for n in names)} |")
        lines.append("")
    return "\n".join(lines)


def _shipped_configs() -> list[str]:
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    if not configs:
        return []
    import yaml

    lines = [
        "## Shipped configs",
        "",
        "The repository's `configs/` directory (each file's `description`, else its first",
        "comment):",
        "",
        "| file | kind | what |",
        "| --- | --- | --- |",
    ]
    for path in configs:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw = raw if isinstance(raw, dict) else {}
        description = _one_line(raw.get("description") or _first_comment(path))
        if len(description) > 240:
            description = description[:240].rsplit(" ", 1)[0] + " …"
        kind = raw.get("experiment", "simulation")
        lines.append(f"| `configs/{path.name}` | {_cell(str(kind))} | {_cell(description)} |")
    return lines + [""]


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and "yaml-language-server" not in line:
            return line.lstrip("#").strip()
    return ""


def _rows(node: dict, defs: dict, prefix: str, seen: tuple[str, ...]) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for key, prop in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        nested = _nested_object(prop, defs)
        if nested is not None and nested not in seen:
            description = prop.get("description") or defs[nested].get("description", "")
            rows.append(f"| `{path}` | section | | | {_cell(_one_line(description))} |")
            rows += _rows(defs[nested], defs, prefix=path + ".", seen=seen + (nested,))
            continue
        rows.append(
            "| `{}` | {} | {} | {} | {} |".format(
                path,
                _cell(_type(prop, defs)),
                "required" if key in required else _cell(_default(prop)),
                _cell(_constraints(prop)),
                _cell(_one_line(prop.get("description", ""))),
            )
        )
    return rows


def _nested_object(prop: dict, defs: dict) -> str | None:
    """The definition name when `prop` is a section: a reference to one object definition with
    properties, possibly alongside null."""
    options = prop.get("anyOf", [prop])
    names = [_ref_name(option) for option in options]
    refs = [n for n in names if n is not None]
    pairs = zip(options, names, strict=True)
    others = [o for o, n in pairs if n is None and o.get("type") != "null"]
    if len(refs) == 1 and not others and defs.get(refs[0], {}).get("properties"):
        return refs[0]
    return None


def _ref_name(node: dict) -> str | None:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return ref.removeprefix("#/$defs/")
    return None


def _type(node: dict, defs: dict, depth: int = 0) -> str:
    if depth > 4:
        return "…"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            parts = []
            for option in node[combinator]:
                text = _type(option, defs, depth + 1)
                if text not in parts:
                    parts.append(text)
            return " or ".join(parts)
    name = _ref_name(node)
    if name is not None:
        target = defs.get(name, {})
        if target.get("properties"):
            keys = ", ".join(target["properties"])
            return f"{{{keys}}}"
        return _type(target, defs, depth + 1) if target else name
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = node.get("items")
        if isinstance(items, dict) and items:
            return f"list of {_type(items, defs, depth + 1)}"
        if "prefixItems" in node:
            inner = ", ".join(_type(i, defs, depth + 1) for i in node["prefixItems"])
            return f"[{inner}]"
        return "list"
    if kind == "object":
        values = node.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"mapping to {_type(values, defs, depth + 1)}"
        if node.get("properties"):
            return "{" + ", ".join(node["properties"]) + "}"
        return "mapping"
    return kind or "any"


def _default(node: dict) -> str:
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _constraints(node: dict) -> str:
    found = []
    for option in [node, *node.get("anyOf", []), *node.get("oneOf", [])]:
        for key, template in _CONSTRAINTS.items():
            if key in option:
                text = template.format(option[key])
                if text not in found:
                    found.append(text)
    return ", ".join(found)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped; outside code spans braces escaped too (attr_list
    would read a trailing `{...}` as attributes and drop it)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("{", "\\{").replace("}", "\\}")
    return "`".join(parts)
