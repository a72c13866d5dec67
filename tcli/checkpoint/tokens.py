"""Tokens: text or ``#id`` to ids, ids to strings, through the checkpoint's ``tokenizer.json``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import CheckpointError, InputError


class Vocab:
    """Token strings of a checkpoint. Without a tokenizer, strings are empty and only ids work."""

    def __init__(self, d_vocab: int, tokenizer_path: Path | None = None):
        self.d_vocab = d_vocab
        self.tokenizer = None
        self._strings: list[str] | None = None
        if tokenizer_path is not None:
            from tokenizers import Tokenizer

            with guarded(f"{tokenizer_path}: cannot read tokenizer"):
                self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
            # an input is tokenized as the model's own library does for one text: no padding to a fixed
            # length and no silent truncation (a prompt longer than the context is an error later)
            self.tokenizer.no_padding()
            self.tokenizer.no_truncation()
        self.added: list[tuple[int, str]] = []  # special tokens the last encode() added: (position, token)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def strings(self) -> list[str]:
        """The decoded text of every id (``""`` for all when there is no tokenizer)."""
        if self._strings is None:
            if self.tokenizer is None:
                self._strings = [""] * self.d_vocab
            else:
                n = self.tokenizer.get_vocab_size(with_added_tokens=True)
                ids = [[i] for i in range(min(n, self.d_vocab))]
                with guarded("cannot decode the vocabulary"):
                    decoded = self.tokenizer.decode_batch(ids, skip_special_tokens=False)
                raw = _raw_bytes(self.tokenizer)
                for i, text in enumerate(decoded):
                    if "\ufffd" in text and raw is not None:
                        decoded[i] = lossless(raw(i), text)
                self._strings = decoded + [""] * (self.d_vocab - len(decoded))
        return self._strings

    def string(self, i: int) -> str:
        return self.strings()[i]

    def token_id(self, spec: str) -> int:
        """One token: ``#464`` is an id; other text must encode to exactly one token."""
        check_text(spec, "--token")
        if re.fullmatch(r"#[0-9]+", spec):
            i = int(spec[1:])
            if i >= self.d_vocab:
                raise InputError(f"token id {i} out of range (the vocabulary has {self.d_vocab} tokens)")
            return i
        if "\\x" in spec and self.tokenizer is not None:  # the escaped form of a non-UTF-8 piece
            found = [i for i, t in enumerate(self.strings()) if t == spec]
            if found:
                return found[0]
        if self.tokenizer is None:
            raise InputError(f"cannot encode token {spec!r}: this checkpoint has no tokenizer.json",
                             "give token ids as #ID")
        ids = self.encode(spec)
        if len(ids) != 1:
            shown = " ".join(f"#{i}={self.string(i)!r}" for i in ids) or "nothing"
            raise InputError(f"{spec!r} is not one token: it encodes to {shown}", "pass one of them as #ID")
        return ids[0]

    def encode(self, text: str, specials: bool = False) -> list[int]:
        """Token ids of ``text``. ``specials``: with the special tokens the tokenizer's post-processor adds
        for one input (BERT's [CLS] … [SEP], Llama's BOS), as the model saw them in training; which were
        added is kept in ``self.added``."""
        if self.tokenizer is None:
            raise InputError("this checkpoint has no tokenizer.json", "give token ids with --ids 1,2,3")
        check_text(text, "the prompt")
        with guarded(f"cannot tokenize {text[:40]!r}"):
            enc = self.tokenizer.encode(text, add_special_tokens=specials)
        ids = enc.ids
        self.added = [(i, enc.tokens[i]) for i, m in enumerate(enc.special_tokens_mask) if m] if specials else []
        bad = [i for i in ids if i >= self.d_vocab]
        if bad:
            raise InputError(f"the tokenizer produced id {bad[0]}, outside the model's vocabulary of {self.d_vocab}")
        return ids

    def parse_ids(self, text: str) -> list[int]:
        """``--ids 1,2,3``: comma-separated token ids."""
        parts = [x.strip() for x in text.split(",") if x.strip()]
        try:
            if not all(re.fullmatch(r"#?[0-9]+", x) for x in parts):
                raise ValueError(text)
            ids = [int(x.lstrip("#")) for x in parts]
        except ValueError:
            raise InputError(f"--ids {text!r}: expected comma-separated integers such as 1,2,3") from None
        for i in ids:
            if not 0 <= i < self.d_vocab:
                raise InputError(f"token id {i} out of range (the vocabulary has {self.d_vocab} tokens)")
        if not ids:
            raise InputError("--ids is empty")
        return ids


def lossless(data: bytes | None, text: str) -> str:
    """A token's string that keeps its bytes: valid UTF-8 as text; otherwise each byte of an invalid
    sequence as ``\\xNN`` (lowercase hex, Python's ``backslashreplace``). Reverse with
    ``re.sub(rb"\\\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), s.encode())`` (docs/recipes.md).
    Only tokens that are not valid UTF-8 get escapes; ``token_id`` stays the key for joins."""
    if data is None:
        return text
    return data.decode("utf-8", errors="backslashreplace")


def _byte_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character standing for each byte → the byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _raw_bytes(tokenizer):
    """``id → bytes`` for tokenizers whose pieces are bytes (a ByteLevel or ByteFallback decoder), else None."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    kinds = {d.get("type") for d in decoder.get("decoders", [decoder]) if isinstance(d, dict)}
    if "ByteLevel" in kinds:
        table = _byte_table()

        def raw(i):
            piece = tokenizer.id_to_token(i)
            if piece is None or any(c not in table for c in piece):
                return None
            return bytes(table[c] for c in piece)
        return raw
    if "ByteFallback" in kinds:
        def raw(i):
            piece = tokenizer.id_to_token(i)
            m = BYTE_FALLBACK.match(piece or "")
            return bytes([int(m.group(1), 16)]) if m else None
        return raw
    return None


@contextlib.contextmanager
def guarded(what: str):
    """Run a tokenizers call with its errors as one CheckpointError line: Python exceptions, and Rust
    panics (``pyo3_runtime.PanicException``, a BaseException), whose message and backtrace the Rust runtime
    writes to file descriptor 2 itself: that is captured here and only its first line kept."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:
            if type(exc).__name__ == "Terminated":
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{what} ({reason})") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def check_text(text: str, what: str) -> None:
    """Command-line text must be valid UTF-8 (Python keeps undecodable bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid UTF-8 text", "give token ids as #ID or --ids 1,2,3") from None
