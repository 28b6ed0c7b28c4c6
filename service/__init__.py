"""tsm-serve: video action recognition with the Temporal Shift Module."""

__version__ = "0.1.0"  # as pyproject.toml
