"""tcli: interpretable tables from the weights of transformer checkpoints."""

__version__ = "0.1.0"
