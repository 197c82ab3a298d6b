"""`plot.style`: a matplotlib style by name, or a `.mplstyle` file read as data.

matplotlib's own `style.use(text)` would import a Python package for a dotted name
("package.style") and fetch a URL for "http…": both run or fetch code named by a config. Here
a name must be one of matplotlib's library styles, and a file is parsed by
`matplotlib.rc_params_from_file` (lines of `key: value`, each checked by matplotlib's rc
validators; nothing is imported, evaluated or fetched). Keys that would run an external
program (`text.usetex`: LaTeX; `text.latex.preamble`) are refused, and matplotlib's style
blacklist (backend, interactive settings) is dropped by `style.context` as for any style."""

from pathlib import Path

STYLE_SUFFIX = ".mplstyle"
# Keys a style may not set: they make matplotlib run LaTeX, an external program.
REFUSED_KEYS = ("text.usetex", "text.latex.preamble", "pgf.preamble", "pgf.texsystem")


def check_style(value: str) -> str:
    """`value` if it names a library style (matplotlib's `style.available`, or "default") or
    is a path ending in .mplstyle; ValueError naming the choices otherwise."""
    if value.endswith(STYLE_SUFFIX):
        return value
    if value in ("default", "classic") or value in _library():
        return value
    raise ValueError(
        f"{value!r} is neither a matplotlib style name nor a path to a {STYLE_SUFFIX} file; "
        f"names: {sorted(_library())}. Fix: one of those names, or a file such as "
        f"paper{STYLE_SUFFIX} (key: value lines)."
    )


def style_params(value: str | None) -> dict | str:
    """What to give `matplotlib.style.context` for `plot.style`: {} for None, a library
    name as it is (matplotlib looks names up in its library before anything else), the
    parsed settings of a file."""
    if value is None:
        return {}
    import matplotlib

    if not value.endswith(STYLE_SUFFIX):
        return check_style(value)
    path = Path(value)
    if not path.is_file():
        raise ValueError(
            f"config key `plot.style`: {value!r} is not a file (relative paths are read from "
            f"the working directory {Path.cwd()}). Fix: give an existing {STYLE_SUFFIX} path "
            "or a style name."
        )
    params = matplotlib.rc_params_from_file(path, use_default_template=False)
    refused = sorted(key for key in params if key in REFUSED_KEYS)
    if refused:
        raise ValueError(
            f"config key `plot.style`: {value!r} sets {refused}, which would run LaTeX (an "
            "external program); refused. Fix: remove those lines (matplotlib's mathtext "
            "draws $\\beta$ and the like without LaTeX)."
        )
    return dict(params)  # style.context drops (and warns about) non-style keys (backend…)


def _library() -> dict:
    import matplotlib.style

    return matplotlib.style.library
