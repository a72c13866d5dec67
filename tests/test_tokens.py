"""Token strings are lossless: pieces whose bytes are not valid UTF-8 get distinct ``\\xNN`` escapes
(byte-level BPE and SentencePiece byte fallback), reversible, and accepted back by --token."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import invoke, parse

SAMPLE = Path(__file__).resolve().parents[1] / "sample_weights" / "attn-only-1l"


def unescape(s: str) -> bytes:
    """The documented reverse of the escapes (docs/recipes.md)."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), s.encode())


def test_byte_level_pieces_are_distinct_and_reversible():
    from tokenizers import Tokenizer

    from tcli.checkpoint.tokens import Vocab

    vocab = Vocab(2048, SAMPLE / "tokenizer.json")
    strings = vocab.strings()
    assert len(set(strings)) == len(strings) == 2048   # the decoded text alone had 1,921 distinct strings
    escaped = [i for i, s in enumerate(strings) if "\\x" in s]
    assert len(escaped) == 128 and not any("\ufffd" in s for s in strings)
    tok = Tokenizer.from_file(str(SAMPLE / "tokenizer.json"))
    lead = [i for i in escaped if 0xC2 <= unescape(strings[i])[0] <= 0xDF and len(unescape(strings[i])) == 1]
    cont = [i for i in escaped if 0x80 <= unescape(strings[i])[0] <= 0xBF and len(unescape(strings[i])) == 1]
    assert lead and cont
    for a in lead[:5]:
        for b in cont[:5]:  # a lead byte then a continuation byte is one character: the tokenizer agrees
            assert tok.decode([a, b]) == (unescape(strings[a]) + unescape(strings[b])).decode("utf-8")
    for i in escaped:
        assert tok.decode([i]) == unescape(strings[i]).decode("utf-8", errors="replace")


def test_escaped_pieces_in_every_format_and_back_through_token():
    from tcli.checkpoint.tokens import Vocab

    strings = Vocab(2048, SAMPLE / "tokenizer.json").strings()
    i = next(i for i, s in enumerate(strings) if "\\x" in s)
    for fmt in ("csv", "tsv", "json", "jsonl"):
        _, rows = parse(invoke("ov", "0.0", "-t", strings[i], "-k", "2", "--format", fmt).stdout, fmt)
        assert {str(r["src_id"]) for r in rows} == {str(i)} and {r["src_token"] for r in rows} == {strings[i]}


def test_sentencepiece_byte_fallback_pieces(tmp_path):
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    from tcli.checkpoint.tokens import Vocab

    pieces = ["<unk>", "a", "▁b", "<0xE2>", "<0x80>", "<0x94>", "<0x41>"]
    tok = Tokenizer(BPE({p: i for i, p in enumerate(pieces)}, [], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    strings = Vocab(len(pieces), path).strings()
    assert strings[3:6] == ["\\xe2", "\\x80", "\\x94"] and strings[6] == "A" and strings[2] == " b"
    assert tok.decode([3, 4, 5]) == "—" == b"".join(unescape(s) for s in strings[3:6]).decode()
