"""The built-in family files as a set: unambiguous detection, and start-up that reads only what it needs."""

from __future__ import annotations

import collections

import pytest

from tcli.checkpoint import spec


def test_no_two_families_claim_the_same_model_type_or_architecture():
    """Detection may try the file named after the model_type first only if no other file claims it."""
    claims = collections.defaultdict(set)
    for name in spec.builtin_names():
        s = spec.builtin_spec(name)
        for key in ("model_type", "architectures"):
            for value in s.detect.get(key, []):
                claims[(key, value)].add(name)
    shared = {k: v for k, v in claims.items() if len(v) > 1}
    assert shared == {}


@pytest.mark.parametrize("model_type, family", [("gpt2", "gpt2"), ("qwen3", "qwen3"), ("mistral", "llama")])
def test_detection_reads_the_model_types_own_file_first(monkeypatch, model_type, family):
    """A config whose model_type names a family file reads that file (and its parent) only; one that does
    not (Mistral, in llama.yaml) scans the files in order and finds the one that claims it."""
    spec.builtin_spec.cache_clear()
    read = []
    real = spec.load_spec
    monkeypatch.setattr(spec, "load_spec", lambda path: read.append(path.stem) or real(path))
    try:
        assert spec.detect({"model_type": model_type}, []).family == family
    finally:
        spec.builtin_spec.cache_clear()
    if model_type == family:  # the family's file, then the files it extends
        chain, name = [], family
        while name:
            chain.append(name)
            name = spec._load_yaml(spec.FAMILY_DIR / f"{name}.yaml").get("extends")
        assert read == chain
    else:
        assert family in read and len(read) <= len(spec.builtin_names())


def test_parent_specs_are_read_through_the_cache(monkeypatch):
    """``extends`` resolves through builtin_spec (each file parsed once per process)."""
    spec.builtin_spec.cache_clear()
    parsed = []
    real = spec._load_yaml
    monkeypatch.setattr(spec, "_load_yaml", lambda path: parsed.append(path.stem) or real(path))
    try:
        spec.builtin_spec("gemma2")
        spec.builtin_spec("gemma3_text")
    finally:
        spec.builtin_spec.cache_clear()
    assert sorted(parsed) == sorted(set(parsed))
