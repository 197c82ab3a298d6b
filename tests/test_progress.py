"""`compile_notice` without a bar (`--no-progress`): one line on stderr for a slow first call
only (no JAX needed: the body sleeps in place of a compile)."""

import re
import time

import pytest
from tqdm import tqdm

from transformer_flows._progress import COMPILING, compile_notice


def test_a_slow_call_without_a_bar_writes_one_line_to_stderr(capsys):
    with tqdm(total=3, disable=True) as bar:
        with compile_notice(bar, quiet_after=0.1):
            time.sleep(0.4)  # a first call: tracing and compiling
        with compile_notice(bar, quiet_after=5.0):
            pass  # an already compiled program: nothing written
    err = capsys.readouterr().err
    match = re.fullmatch(re.escape(COMPILING) + r"… compiled in (\d+\.\d) s\n", err)
    assert match, repr(err)
    assert 0.4 <= float(match[1]) < 5.0  # the elapsed time of the slow call, to 0.1 s


def test_a_call_that_raises_without_a_bar_ends_its_line(capsys):
    with pytest.raises(KeyboardInterrupt), compile_notice(None, quiet_after=0.05):
        time.sleep(0.2)
        raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert re.fullmatch(re.escape(COMPILING) + r"… stopped after \d+\.\d s\n", err), repr(err)


def test_bad_seconds_are_refused_by_name():
    with pytest.raises(ValueError, match=r"quiet_after=-1.0 must be a number of seconds"):
        with compile_notice(None, quiet_after=-1.0):
            pass
