"""mer: an open, fast, honest training framework for facial micro-expression recognition."""

__version__ = "0.1.0"
