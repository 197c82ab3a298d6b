"""The experiment layer: declared config schema, registries, planning, storage, runs."""
