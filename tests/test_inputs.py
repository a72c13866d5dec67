"""Prompts are tokenized as the model's own library does for one input: the tokenizer.json's fixed padding
and truncation are off, the family's special tokens are added (and said on stderr), a prompt longer than the
context is an error; tokenizer failures, Rust panics included, are one line."""

from __future__ import annotations

import json
import shutil

import pytest

from builders import CTX, V
from helpers import invoke, parse
from test_errors import assert_one_line_error


@pytest.fixture(scope="module")
def bert_with_tokenizer(hf_dirs, tmp_path_factory):
    """The test BERT with a WordPiece-style tokenizer.json that pads to 16 and truncates to 8, as published
    BERT tokenizers often do, and adds [CLS] … [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    _, src = hf_dirs["bert"]
    path = tmp_path_factory.mktemp("bert") / "bert"
    shutil.copytree(src, path)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, **{f"w{i}": i for i in range(5, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=8)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_no_padding_no_truncation_and_specials_added(bert_with_tokenizer):
    prompt = " ".join(f"w{i}" for i in range(5, 15))  # 10 words: truncation would cut, padding would pad
    result = invoke("lens", bert_with_tokenizer, "-p", prompt, "-k", "1", "--csv")
    _, rows = parse(result.stdout, "csv")
    positions = sorted({int(r["position"]) for r in rows})
    assert positions == list(range(12))  # [CLS] + 10 words + [SEP]: neither 8 nor 16
    assert "[CLS] at 0, [SEP] at 11" in result.stderr
    _, rows = parse(invoke("attention", bert_with_tokenizer, "-p", prompt, "--head", "0.0", "-k", "1",
                           "--csv").stdout, "csv")
    tokens = {int(r["dst_pos"]): r["dst_token"] for r in rows}
    assert tokens[0] == "[CLS]" and tokens[11] == "[SEP]" and "[PAD]" not in tokens.values()


def test_single_tokens_get_no_specials(bert_with_tokenizer):
    _, rows = parse(invoke("ov", bert_with_tokenizer, "0.0", "-t", "w7", "-k", "1", "--csv").stdout, "csv")
    assert rows[0]["src_id"] == "7"


def test_a_prompt_longer_than_the_context_is_an_error(bert_with_tokenizer):
    prompt = " ".join(f"w{5 + i % 20}" for i in range(CTX + 5))
    assert_one_line_error(invoke("decompose", bert_with_tokenizer, "-p", prompt, ok=False), "context")


def test_tokenizer_panics_are_one_line(tmp_path):
    """A truncation stride ≥ max_length makes the Rust tokenizer panic at encode time: with truncation off
    that cannot happen; a tokenizer that panics at load time (a corrupt normalizer) is one line too."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "sample_weights" / "attn-only-1l"
    path = tmp_path / "m"
    shutil.copytree(src, path)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 5}
    (path / "tokenizer.json").write_text(json.dumps(spec))
    invoke("lens", path, "-p", "To be, or not to be, that is the question", "-k", "1")
    spec["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}
    (path / "tokenizer.json").write_text(json.dumps(spec))
    assert_one_line_error(invoke("lens", path, "-p", "To be", ok=False), "tokenizer")


def test_post_ln_encoders_circuits_are_the_raw_weights(hf_dirs):
    """BERT is processed as HookedEncoder processes it: nothing that changes a circuit. The full OV circuit
    of a head equals W_E W_V W_O W_E^T computed from the torch model's own weights (tied unembedding), and
    info names what was applied."""
    import numpy as np

    model, path = hf_dirs["bert"]
    info = parse(invoke("info", path, "--json").stdout, "json")[1][0]
    assert info["processing"] == "fold_value_biases"
    E = model.embeddings.word_embeddings.weight.detach().double().numpy()  # [V, d]
    att = model.encoder.layer[1].attention
    H, d = 4, E.shape[1]
    e = d // H
    WV = att.self.value.weight.detach().double().numpy().T[:, 2 * e:3 * e]        # head 2: [d, e]
    WO = att.output.dense.weight.detach().double().numpy().T[2 * e:3 * e, :]      # [e, d]
    OV = E @ WV @ WO @ E.T
    _, rows = parse(invoke("ov", path, "1.2", "-t", "#7", "-k", "5", "--json").stdout, "json")
    top = np.argsort(-OV[7])[:5]
    assert [r["out_id"] for r in rows] == top.tolist()
    assert np.allclose([r["value"] for r in rows], OV[7, top], rtol=1e-4, atol=1e-6)
    lam = np.linalg.eigvals(WO @ E.T @ E @ WV)
    heads = {(r["layer"], r["head"]): r for r in parse(invoke("heads", path, "--no-behaviour", "--json").stdout,
                                                         "json")[1]}
    assert abs(heads[(1, 2)]["copying_score"] - lam.real.sum() / np.abs(lam).sum()) < 1e-4
