"""tsm-serve: video action recognition with the Temporal Shift Module."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here
