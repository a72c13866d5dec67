"""Checkpoint loading: safetensors files, family specs, lazy canonical weights, tokenizers."""

from .loader import Checkpoint, Weights, build_config, open_checkpoint, resolve_default, sample_dir

__all__ = ["Checkpoint", "Weights", "build_config", "open_checkpoint", "resolve_default", "sample_dir"]
