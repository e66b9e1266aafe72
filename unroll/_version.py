"""The version of unroll, defined in this one place (read by ``pyproject.toml`` and
re-exported as ``unroll.__version__``)."""

__version__ = "0.1.0"
