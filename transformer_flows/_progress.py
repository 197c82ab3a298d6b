"""Progress bars that tell the truth about compilation.

The first call of a jitted program traces and compiles it (seconds to a minute) before any
step or chunk is done, and a bar standing at 0/N says nothing about why. `compile_notice`
wraps such a first call: while it runs, a timer thread shows on the bar
"compiling (first run of this shape; cached afterwards): 12 s", updated every second; when it
returns, the bar says how long compiling took. Under JAX's asynchronous dispatch the call
returns once the program is compiled and launched, so the time shown is the compile time
(plus dispatch), not the computation.

Without a bar (`--no-progress`), a call that is still running after `quiet_after` seconds
(2 s) writes one line to stderr: "compiling (first run of this shape; cached afterwards)…"
when that time has passed, completed by " compiled in X s" when the call returns. A quick
call (a program already compiled) writes nothing."""

import contextlib
import sys
import threading
import time

COMPILING = "compiling (first run of this shape; cached afterwards)"


@contextlib.contextmanager
def compile_notice(bar, *, delay: float = 0.2, every: float = 1.0, quiet_after: float = 2.0):
    """Show `COMPILING` with the elapsed seconds on tqdm `bar`'s postfix while the body runs.

    **Arguments:**
    - `bar`: a `tqdm` bar. If it is disabled (or None), the notice goes to stderr instead,
      as one line, and only for a body that runs longer than `quiet_after` seconds.
    - `delay`: seconds before the first notice on the bar (a call that returns sooner, e.g. a
      program already compiled in this process, shows nothing).
    - `every`: seconds between updates of the elapsed time on the bar.
    - `quiet_after`: without a bar, seconds before the line "COMPILING…" is written to stderr;
      it is completed by " compiled in X s" (or " stopped after X s" if the body raised).

    Afterwards the postfix reads "compiled in X s" if a notice was shown."""
    for name, value in (("delay", delay), ("every", every), ("quiet_after", quiet_after)):
        if not value >= 0:
            raise ValueError(f"compile_notice: {name}={value!r} must be a number of seconds >= 0.")
    quiet = getattr(bar, "disable", True)
    stream = sys.stderr if quiet else None
    started = time.perf_counter()
    finished = threading.Event()
    shown = threading.Event()

    def tick():
        if quiet:
            if not finished.wait(quiet_after):
                stream.write(f"{COMPILING}…")
                stream.flush()
                shown.set()
            return
        wait = delay
        while not finished.wait(wait):
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{COMPILING}: {elapsed:.0f} s", refresh=True)
            shown.set()
            wait = every

    thread = threading.Thread(target=tick, name="compile-notice", daemon=True)
    thread.start()
    completed = False
    try:
        yield
        completed = True
    finally:
        finished.set()
        thread.join()
        if shown.is_set():
            elapsed = time.perf_counter() - started
            if not quiet:
                bar.set_postfix_str(f"compiled in {elapsed:.1f} s", refresh=True)
            else:
                outcome = "compiled in" if completed else "stopped after"
                stream.write(f" {outcome} {elapsed:.1f} s\n")
                stream.flush()
