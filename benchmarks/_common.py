"""Shared benchmark plumbing: timing (compile excluded, medians), machine info, result logs.

Every script prints a table and appends it, with the machine and the command, to
benchmarks/results/<script>.md ($TF_BENCH_RESULTS/<script>.md if set); BENCHMARKS.md
summarises those logs.
"""

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import jax

# TF_BENCH_RESULTS redirects the logs (benchmarks/gpu_suite.sh collects a session's tables in
# its output directory instead of appending to the committed ones).
RESULTS = os.environ.get("TF_BENCH_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)


def block(tree):
    """Wait for every array in `tree` (JAX or torch)."""
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return tree


def time_stats(fn, *args, repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """{"median", "min", "first"} seconds of fn(*args): `warmup` untimed-for-the-median calls
    (which compile a jitted function; "first" is the first of them, nan for warmup=0), then
    `repeats` timed calls. On a shared machine the min is the least disturbed repeat."""
    first = float("nan")
    for i in range(warmup):
        start = time.perf_counter()
        block(fn(*args))
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "first": first}


def time_call(fn, *args, repeats: int = 3, warmup: int = 1) -> tuple[float, float]:
    """(median of `repeats` timed calls, seconds of the first warm-up call); see time_stats."""
    stats = time_stats(fn, *args, repeats=repeats, warmup=warmup)
    return stats["median"], stats["first"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)} logical cores" if names else cpu
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{cpu}; JAX {jax.__version__} on {jax.default_backend()} ({devices}); "
        f"Python {platform.python_version()}; load average at start {load:.1f}"
    )


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def report(name: str, title: str, body: str) -> None:
    """Print `body` and append it with machine, revision and command to results/<name>.md."""
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    text = (
        f"\n## {title} ({stamp}, git {git_revision()})\n\n- machine: {machine()}\n"
        f"- command: `{command}`\n\n{body}\n"
    )
    print(text)
    with open(os.path.join(RESULTS, f"{name}.md"), "a") as f:
        f.write(text)
