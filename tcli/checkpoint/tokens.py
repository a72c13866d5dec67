"""Tokens: text or ``#id`` to ids, ids to strings, through the checkpoint's ``tokenizer.json``."""

from __future__ import annotations

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

            try:
                self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
            except Exception as exc:  # the tokenizers library raises plain Exceptions
                raise CheckpointError(f"{tokenizer_path}: cannot read tokenizer ({str(exc).splitlines()[0]})") from None

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
                decoded = self.tokenizer.decode_batch(ids, skip_special_tokens=False)
                self._strings = decoded + [""] * (self.d_vocab - len(decoded))
        return self._strings

    def string(self, i: int) -> str:
        return self.strings()[i]

    def token_id(self, spec: str) -> int:
        """One token: ``#464`` is an id; other text must encode to exactly one token."""
        if spec.startswith("#") and spec[1:].isdigit():
            i = int(spec[1:])
            if i >= self.d_vocab:
                raise InputError(f"token id {i} out of range (the vocabulary has {self.d_vocab} tokens)")
            return i
        if self.tokenizer is None:
            raise InputError(f"cannot encode token {spec!r}: this checkpoint has no tokenizer.json",
                             "give token ids as #ID")
        ids = self.encode(spec)
        if len(ids) != 1:
            shown = " ".join(f"#{i}={self.string(i)!r}" for i in ids) or "nothing"
            raise InputError(f"{spec!r} is not one token: it encodes to {shown}", "pass one of them as #ID")
        return ids[0]

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this checkpoint has no tokenizer.json", "give token ids with --ids 1,2,3")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bad = [i for i in ids if i >= self.d_vocab]
        if bad:
            raise InputError(f"the tokenizer produced id {bad[0]}, outside the model's vocabulary of {self.d_vocab}")
        return ids

    def parse_ids(self, text: str) -> list[int]:
        """``--ids 1,2,3``: comma-separated token ids."""
        try:
            ids = [int(x.strip().lstrip("#")) for x in text.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--ids {text!r}: expected comma-separated integers such as 1,2,3") from None
        for i in ids:
            if not 0 <= i < self.d_vocab:
                raise InputError(f"token id {i} out of range (the vocabulary has {self.d_vocab} tokens)")
        if not ids:
            raise InputError("--ids is empty")
        return ids
