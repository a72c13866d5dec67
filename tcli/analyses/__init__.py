"""One module per command: each takes loaded (processed) weights and returns an ``output.Table``."""
