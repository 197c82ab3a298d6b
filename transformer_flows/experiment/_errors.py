"""The error of the config layer, below every module that reads, edits or checks configs (so
none of them imports another only for it)."""


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or not among the allowed values. The
    message names the key path, the value, what is allowed and the fix."""


class SolveFailures(RuntimeError):
    """Some solves of a sweep failed (e.g. max_steps reached) and the config does not allow
    failures. The dataset was written with them masked; `dataset` (an `xarray.Dataset`) holds
    it."""

    def __init__(self, message: str, dataset):
        super().__init__(message)
        self.dataset = dataset


class FitSolveFailed(SolveFailures):
    """A solve of a fit (a training step or a held-out evaluation) failed, e.g. it needed more
    steps than its bound. The fit stopped: no metrics were written (`dataset` is None), and
    `checkpoint.eqx` keeps the last checkpointed step."""

    def __init__(self, message: str):
        super().__init__(message, None)
