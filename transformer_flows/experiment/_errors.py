"""The error of the config layer, below every module that reads, edits or checks configs (so
none of them imports another only for it)."""


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or not among the allowed values. The
    message names the key path, the value, what is allowed and the fix."""
