"""JAX's persistent compilation cache for the command line and the experiment scripts: a second
identical run loads its compiled programs from disk instead of compiling them again."""

import os
from pathlib import Path

import jax

OPT_OUT = "TRANSFORMER_FLOWS_NO_CACHE"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/transformer-flows`, or `~/.cache/transformer-flows`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer-flows"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in `path` (default `default_cache_dir()`)
    for every later compilation of this process, and return the folder.

    Every program is cached, however fast it compiled: the sweeps' and fits' programs take
    seconds, but `make demo` is dozens of small ones. Returns None (and changes nothing) when
    the environment variable TRANSFORMER_FLOWS_NO_CACHE is set to a non-empty value other
    than 0, or when the folder cannot be created. Stale entries are harmless: the cache key
    includes the program, the jax/jaxlib versions and the device. Delete the folder to reclaim
    the space.
    """
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return None
    folder = Path(path) if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
