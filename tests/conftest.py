"""Strict, reproducible test settings (float64 where accuracy is asserted)."""

import os

import jax
import pytest

# Tests compile afresh: the command line's persistent compilation cache would make compile
# counts (tests/helpers.count_compilations) depend on earlier runs.
os.environ["TRANSFORMER_FLOWS_NO_CACHE"] = "1"

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

# Strict dtype promotion (no silent float32 -> float64 or int -> float mixing) and
# jaxtyping+beartype runtime checks of every annotated function in the package; TF_STRICT=0
# switches both off (to tell a type failure from a numerical one). The import hook must be
# installed before `transformer_flows` is first imported, which is why it lives here and not
# in a fixture.
if os.environ.get("TF_STRICT", "1") == "1":
    from jaxtyping import install_import_hook

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    install_import_hook("transformer_flows", "beartype.beartype")


class GetKey:
    """Fresh PRNG keys from one seed (TRANSFORMER_FLOWS_TEST_SEED to reproduce a failure)."""

    def __init__(self, seed: int):
        self.key = jax.random.key(seed)

    def __call__(self):
        self.key, key = jax.random.split(self.key)
        return key


@pytest.fixture
def getkey():
    return GetKey(int(os.environ.get("TRANSFORMER_FLOWS_TEST_SEED", "0")))


@pytest.fixture
def without_type_checker():
    """For tests of our own messages for arguments of the wrong type: users run without the
    jaxtyping/beartype checker, which would otherwise refuse such arguments first (naming the
    parameter, but not saying what to do). Values of the right type are checked either way."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
