"""Progress bars that tell the truth about compilation.

The first call of a jitted program traces and compiles it (seconds to a minute) before any
step or chunk is done, and a bar standing at 0/N says nothing about why. `compile_notice`
wraps such a first call: while it runs, a timer thread shows on the bar
"compiling (first run of this shape; cached afterwards): 12 s", updated every second; when it
returns, the bar says how long compiling took. Under JAX's asynchronous dispatch the call
returns once the program is compiled and launched, so the time shown is the compile time
(plus dispatch), not the computation."""

import contextlib
import threading
import time

COMPILING = "compiling (first run of this shape; cached afterwards)"


@contextlib.contextmanager
def compile_notice(bar, *, delay: float = 0.2, every: float = 1.0):
    """Show `COMPILING` with the elapsed seconds on tqdm `bar`'s postfix while the body runs.

    **Arguments:**
    - `bar`: a `tqdm` bar (nothing is shown if it is disabled).
    - `delay`: seconds before the first notice (a call that returns sooner, e.g. a program
      already compiled in this process, shows nothing).
    - `every`: seconds between updates of the elapsed time.

    Afterwards the postfix reads "compiled in X s" if a notice was shown."""
    if getattr(bar, "disable", True):
        yield
        return
    started = time.perf_counter()
    finished = threading.Event()
    shown = threading.Event()

    def tick():
        wait = delay
        while not finished.wait(wait):
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{COMPILING}: {elapsed:.0f} s", refresh=True)
            shown.set()
            wait = every

    thread = threading.Thread(target=tick, name="compile-notice", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()
        if shown.is_set():
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"compiled in {elapsed:.1f} s", refresh=True)
