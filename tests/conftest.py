"""Strict, reproducible test settings (float64 where accuracy is asserted)."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


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
