"""The claim of an output directory by one config: fingerprints, `config.yaml`'s fingerprint
line, and the refusal of a folder that holds no run of this library (layout: see `_store`).

`OUT/config.yaml` starts with the comment `# fingerprint: <sha256>` (`FINGERPRINT_HEADER`), the
fingerprint of the config's numerics; a later run with another fingerprint is refused, one
with the same fingerprint resumes (and rewrites the file, so presentation-only keys may
change). A non-empty OUT holding neither `config.yaml` nor only the names a run writes is
refused unless `allow_nonempty_out()` is in force (the command line's
`--allow-nonempty-out`); nothing there is deleted."""

import contextlib
import contextvars
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ._run_files import (
    _NOFOLLOW,
    _RUN_NAMES,
    _TEMPORARY,
    CONFIG_FILE,
    StoreError,
    atomic_write_text,
)

FINGERPRINT_HEADER = "# fingerprint: "
_ALLOW_NONEMPTY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "transformer_flows_allow_nonempty_out", default=False
)


@contextlib.contextmanager
def allow_nonempty_out() -> Iterator[None]:
    """Within the block, a run may claim a non-empty --out that holds no run of this library
    (the command line's `--allow-nonempty-out`). Its files are left alone."""
    token = _ALLOW_NONEMPTY.set(True)
    try:
        yield
    finally:
        _ALLOW_NONEMPTY.reset(token)


def fingerprint(payload: Mapping) -> str:
    """The sha256 (hex) of a canonical JSON text of `payload`.

    Callers pass the resolved numerics of the config (everything that changes the numbers:
    model, sweep, solver, precision, seeds — not names, descriptions or plot settings) plus the
    inputs of what is fingerprinted (for a chunk: its group, index, length and the values of
    the axes it covers). Keys are sorted, floats are written with `repr` (so exact: 0.1 and
    0.1 + 1e-17 differ only if they are different floats), tuples are lists and numpy scalars
    and arrays become Python numbers and lists. Note that 1 and 1.0 are different values.

    Values must be mappings with string keys, lists, tuples, strings, ints, floats, bools,
    None, numpy scalars or numpy arrays; anything else raises TypeError naming its key path.
    """
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"fingerprint() takes a mapping of plain values, got {type(payload).__name__}; "
            "pass e.g. {'config': numerics, 'chunk': inputs}."
        )
    text = json.dumps(
        _canonical(payload, "payload"), sort_keys=True, separators=(",", ":"), allow_nan=True
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value, where: str):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist(), where)
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(
                    f"fingerprint(): key {key!r} at {where} is a {type(key).__name__}; keys "
                    "must be strings (convert it with str(), as the config does)."
                )
        return {key: _canonical(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"fingerprint(): {where} is a {type(value).__name__} ({value!r:.60}); pass plain "
        "values (str, int, float, bool, None, lists, mappings, numpy arrays)."
    )


def claim_config(out: Path, path: Path, config_text: str, config_fingerprint: str) -> None:
    """Make `out` the directory of the run with this config (its config file at `path`), or
    refuse with StoreError (see `RunDirectory.claim`)."""
    if not path.exists():
        refuse_foreign(out)
    else:
        previous = _header_fingerprint(path)
        if previous != config_fingerprint:
            from ._config_diff import describe_differences

            recorded = f"fingerprint {previous[:12]}…" if previous else "no fingerprint line"
            raise StoreError(
                f"--out {str(out)!r} holds a run of a different config ({path}: "
                f"{recorded}; this config: {config_fingerprint[:12]}…); resuming would mix "
                "results. Use a new --out, or delete that directory."
                + describe_differences(path.read_text(errors="replace"), config_text)
            )
    atomic_write_text(path, f"{FINGERPRINT_HEADER}{config_fingerprint}\n{config_text}")


def refuse_foreign(out: Path) -> None:
    """Refuse a non-empty `out` holding files a run does not write (unless allowed)."""
    if _ALLOW_NONEMPTY.get() or os.path.lexists(out / CONFIG_FILE):
        return
    foreign = sorted(
        name
        for name in os.listdir(out)
        if not _RUN_NAMES.match(name)
        and not (_TEMPORARY.match(name) and _RUN_NAMES.match(_TEMPORARY.match(name)["name"]))
    )
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise StoreError(
            f"--out {str(out)!r} is not empty and holds no run of transformer-flows "
            f"(no {CONFIG_FILE}; found {shown}{more}). A run writes only its own files, "
            "but it will not take over a folder it did not create: use a new or empty "
            "--out, or pass --allow-nonempty-out (Python: `with allow_nonempty_out():`) "
            "to claim it anyway (nothing there is deleted)."
        )


def _header_fingerprint(path: Path) -> str | None:
    descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(descriptor, encoding="utf-8", errors="replace") as file:
        first = file.readline(4096).rstrip("\n")
    if first.startswith(FINGERPRINT_HEADER):
        return first[len(FINGERPRINT_HEADER) :].strip() or None
    return None
