"""JAX's persistent compilation cache for the command line and the experiment scripts: a second
identical run loads its compiled programs from disk instead of compiling them again."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import jax

OPT_OUT = "TRANSFORMER_FLOWS_NO_CACHE"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/transformer-flows`, or `~/.cache/transformer-flows`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer-flows"


def enable_compilation_cache(
    path: str | os.PathLike | None = None, *, nan_checks: bool = False
) -> Path | None:
    """Turn on JAX's persistent compilation cache in `path` (default `default_cache_dir()`)
    for every later compilation of this process, and return the folder.

    JAX does not persist a program that holds host callbacks, and a run-time check under jit
    (`eqx.error_if`: the value checks of `solve` and of the fields, diffrax's own) raises
    through one. `nan_checks=True` is for programs whose inputs the caller makes itself (the
    sweeps of `transformer-flows run`, `make demo`): for the rest of this process such checks
    return NaN in place of the checked value instead of raising, so the programs hold no
    callback and are cached. A check that fails then makes the solve fail (NaN state: no
    step is accepted, `max_steps` is reached, `succeeded` is False), which the sweeps mask
    and count. Checks of concrete values (ValueError at the call) are unchanged. Call it
    before anything is traced: a program traced earlier keeps the callbacks it has.

    Every program is cached, however fast it compiled: the sweeps' and fits' programs take
    seconds, but `make demo` is dozens of small ones. Returns None (and changes nothing) when
    the environment variable TRANSFORMER_FLOWS_NO_CACHE is set to a non-empty value other
    than 0, or when the folder cannot be created. Stale entries are harmless: the cache key
    includes the program, the jax/jaxlib versions and the device. Delete the folder to reclaim
    the space.
    """
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return None
    if nan_checks:
        _nan_checks()
    folder = Path(path) if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _nan_checks() -> None:
    """Equinox's default `on_error` for this process: "nan" (unless EQX_ON_ERROR asks for
    something else). Equinox reads the EQX_ON_ERROR environment variable once, at import, into
    the module global that `eqx.error_if` consults when it traces; set that global. Should a
    later equinox not have it, nothing changes (the programs are then just not cached)."""
    from equinox import _errors

    if os.environ.get("EQX_ON_ERROR") is None and getattr(_errors, "EQX_ON_ERROR", None) == "raise":
        _errors.EQX_ON_ERROR = "nan"


@contextlib.contextmanager
def raising_checks() -> Iterator[None]:
    """Inside: run-time checks traced under jit raise, even where equinox's default `on_error`
    is "nan" (after `enable_compilation_cache(nan_checks=True)` in this process, or
    EQX_ON_ERROR=nan) or "off"; "raise" and "breakpoint" are kept. For programs whose failed
    solves must stop with their reason (the fits: a solve past its step bound would otherwise
    turn into NaN parameters and read as a divergence, or with "off" into a truncated solve).
    Only programs traced inside are affected; the previous default is restored on exit."""
    from equinox import _errors

    before = getattr(_errors, "EQX_ON_ERROR", None)
    forced = before in ("nan", "off")
    if forced:
        _errors.EQX_ON_ERROR = "raise"
    try:
        yield
    finally:
        if forced:
            _errors.EQX_ON_ERROR = before
