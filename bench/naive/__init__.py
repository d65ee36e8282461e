"""The naive baseline of the benchmark (not part of ssehub)."""
