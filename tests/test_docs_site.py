"""The docs site: it builds with `mkdocs build --strict`, a real browser renders it, and its
references cover the code.

One strict build per session (the `site` fixture, into a temporary directory), then headless
Chromium (`chromium --headless --dump-dom`) renders the home page and an API page and the
rendered DOM must hold their headings and docstring text. Without the `docs` extra or without
Chromium the build or browser tests skip and say what to install; `make test` installs both
(Chromium when run as root with apt, as on CI, where a missing Chromium fails instead).
"""

import functools
import html
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"


@functools.cache
def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ without a build


def _public_names(module) -> set[str]:
    return {name for name in vars(module) if not name.startswith("_")} - {"annotations"}


def test_api_reference_covers_public_api():
    """Every public name of the package and its subpackages has an entry in docs/api/*.md, and
    every entry names a public object: a name added to an `__init__.py` must be added to its
    page of the reference."""
    import types

    import transformer_flows as tf

    entries = set()
    for page in sorted(API.glob("*.md")):
        entries |= set(re.findall(r"^::: transformer_flows\.(\S+)$", page.read_text(), re.M))
    expected = set()
    for prefix, module in [
        ("", tf),
        ("theory.", tf.theory),
        ("limits.", tf.limits),
        ("pretrained.", tf.pretrained),
        ("experiment.", tf.experiment),
    ]:
        for name in _public_names(module):
            if isinstance(getattr(module, name), types.ModuleType):
                continue  # subpackages have pages of their own; stdlib modules are not API
            expected.add(prefix + name)
    missing = sorted(expected - entries)
    assert not missing, f"public names without an entry in docs/api/*.md: {missing}"
    stale = sorted(entries - expected)
    assert not stale, f"docs/api/*.md entries that are not public names: {stale}"


def test_links_rewritten_from_repository_to_site_paths():
    rewrite = _hooks().rewrite_links
    readme = (
        "[m](docs/models.md#masks) [r](REPRODUCTION.md) ![f](docs/figures/figure2_regimes.png)"
        " [w](https://example.org/docs/models.md) [a](#quickstart) [gone](docs/nothing.md)\n"
        "```python\nx = [m](docs/models.md)\n```\n"
    )
    assert rewrite(readme, "README.md", "index.md") == (
        "[m](models.md#masks) [r](reproduction.md) ![f](figures/figure2_regimes.png)"
        " [w](https://example.org/docs/models.md) [a](#quickstart) [gone](docs/nothing.md)\n"
        "```python\nx = [m](docs/models.md)\n```\n"
    )
    sweeps = "[c](../configs) [r](../REPRODUCTION.md#x) [f](fitting.md)"
    assert rewrite(sweeps, "docs/sweeps.md", "sweeps.md") == (
        "[c](reference/config.md) [r](reproduction.md#x) [f](fitting.md)"
    )
    assert rewrite("[s](../sweeps.md) [b](../../BENCHMARKS.md)", "docs/api/x.md", "api/x.md") == (
        "[s](../sweeps.md) [b](../benchmarks.md)"
    )


def test_lists_may_follow_a_paragraph():
    """As on GitHub, a list item directly after a paragraph line starts a list; indented lines,
    table rows and existing list items are left alone."""
    separate = _hooks().separate_lists
    assert separate(["**Arguments:**", "- `x`: a point.", "- `y`: another."]) == [
        "**Arguments:**",
        "",
        "- `x`: a point.",
        "- `y`: another.",
    ]
    unchanged = ["- a", "  continued", "- b", "", "| t |", "- c", "    code", "- d", "* e"]
    assert separate(unchanged) == unchanged


def test_unlisted_guides_join_the_nav():
    """A docs/*.md missing from mkdocs.yml's nav is appended to "Guides" under its title."""
    nav = [{"Home": "index.md"}, {"Guides": [{"Maths": "mathematics.md"}]}]
    _hooks()._add_new_guides(nav)
    guides = nav[1]["Guides"]
    assert guides[0] == {"Maths": "mathematics.md"}
    assert {"A tour of the library": "tour.md"} in guides
    assert not any("index.md" in entry.values() for entry in guides)
    pages = {name for entry in guides for name in entry.values()}
    assert pages == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_markdown_reads_as_on_github():
    """Inner products and placeholders in angle brackets stay on the page (Python-Markdown
    would take them for HTML tags and drop them); code, autolinks and real tags are kept."""
    markdown = pytest.importorskip("markdown", reason="pip install -e '.[docs]' (make test does)")
    md = markdown.Markdown(extensions=[_hooks()._markdown_extension()])
    page = md.convert(
        "e^{β<x,y>} and <x_i, x_j> in `<q,k>`, <https://example.org>, a<sub>2</sub>, "
        "DIR/<name>.png\n**Arguments:**\n- `x`: a point."
    )
    assert "e^{β&lt;x,y&gt;} and &lt;x_i, x_j&gt; in <code>&lt;q,k&gt;</code>" in page
    assert '<a href="https://example.org">' in page and "a<sub>2</sub>" in page
    assert "DIR/&lt;name&gt;.png" in page
    assert "<li><code>x</code>: a point.</li>" in page


# ------------------------------------------------------------------ the build


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> pathlib.Path:
    pytest.importorskip(
        "mkdocs", reason="the docs tools are missing: pip install -e '.[docs]' (make test does)"
    )
    pytest.importorskip("mkdocstrings", reason="pip install -e '.[docs]' (make test does)")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_config_reference_generated_from_schema(site):
    """Every key of every config kind appears, by its dotted path, in the config reference."""
    from transformer_flows.experiment import json_schema

    schema = json_schema()
    defs = schema["$defs"]
    page = html.unescape((site / "reference" / "config.html").read_text())
    choices = schema.get("oneOf") or schema.get("anyOf") or []
    kinds = [ref["$ref"].rsplit("/", 1)[1] for ref in choices if "$ref" in ref]
    assert kinds, "the schema names no config kinds"
    for kind in kinds:
        assert f"({kind})" in page
        for key in defs[kind]["properties"]:
            assert f"<code>{key}</code>" in page, (kind, key)
    assert "<code>solver.rtol</code>" in page and "<code>sweep.beta</code>" in page
    for name in schema.get("x-registered-names", {}).get("solvers", []):
        assert f"<code>{name}</code>" in page


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no Chromium for the browser test: apt-get install -y chromium (make browser)"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        # Where `make test` installs Chromium itself (root with apt, as on CI) the browser test
        # must run, not skip.
        pytest.fail(message)
    pytest.skip(message)


def _render(chromium: str, page: pathlib.Path, profile: pathlib.Path) -> str:
    """The DOM of `page` after Chromium has loaded it and run its scripts."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # root on CI; the page is the one this test just built
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _headings(dom: str) -> list[str]:
    found = re.findall(r"<h([1-6])[^>]*>(.*?)</h\1>", dom, flags=re.S)
    return [
        html.unescape(re.sub(r"<[^>]+>", "", text)).replace("¶", "").strip() for _, text in found
    ]


def _text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_browser_renders_home_page(site, chromium, tmp_path):
    dom = _render(chromium, site / "index.html", tmp_path)
    headings = _headings(dom)
    assert "transformer-flows" in headings
    assert "Quickstart" in headings
    assert "<title>transformer-flows</title>" in dom
    # The navigation reaches the guides and the references.
    text = _text(dom)
    for entry in ("Mathematics", "Sweeps and configs", "API reference", "Config reference"):
        assert entry in text


def test_browser_renders_api_page(site, chromium, tmp_path):
    dom = _render(chromium, site / "api" / "solving.html", tmp_path)
    headings = _headings(dom)
    for name in ("Solving", "solve", "Trajectory", "solve_batch", "Renormalized", "RK4"):
        assert name in headings, (name, headings)
    text = _text(dom)
    # The docstring itself, and its argument list rendered as a list.
    assert "Integrate field from x0 at ts[0] and save at every time in ts" in text
    assert re.search(r"<li><code>field</code>", dom)
