"""``--minus CHECKPOINT2`` for census-type tables, and the vocabulary check every difference needs.

A census row is identified by its keys (``heads``: layer, head; ``compose``: kind, layer1, head1, layer2,
head2; ``neurons`` census: layer, neuron, side — B's census is then computed for every neuron, so that each
of A's most token-like neurons finds its row). The difference keeps the first checkpoint's table (its rows,
order and columns) and adds, for each score column c, ``delta_c = c(A) − c(B)``: B's row with the same keys,
in float64. Both checkpoints must have the same rows (the same heads) and the same vocabulary.
"""

from __future__ import annotations

from ..errors import InputError
from ..output.table import Figure, Table
from .. import columns

KEYS = {"heads": ["layer", "head"], "compose": ["kind", "layer1", "head1", "layer2", "head2"],
        "neurons": ["layer", "neuron", "side"]}
# the score columns that get a delta_* column (compose's baseline depends on the dimensions only; a neuron's
# rank and top token id are not differences)
DELTAS = {"heads": [c for c in columns.HEADS if c not in KEYS["heads"]], "compose": ["score"],
          "neurons": ["z_score", "top_value", "mean", "std", "in_norm", "gate_norm", "out_norm"]}


def check_vocab(a, b, name_a: str, name_b: str) -> str | None:
    """Exit 2 naming the first token id whose string differs between Vocab ``a`` and ``b`` (or that only one
    has). Where one of them has no tokenizer, only the sizes can be compared: the note returned says so."""
    n = min(a.d_vocab, b.d_vocab)
    note = None
    if a.has_tokenizer and b.has_tokenizer:
        sa, sb = a.strings(), b.strings()
        for i in range(n):
            if sa[i] != sb[i]:
                raise InputError(f"--minus: the vocabularies differ at token id {i} ({sa[i]!r} in {name_a}, "
                                 f"{sb[i]!r} in {name_b})", "a difference needs one vocabulary")
    elif a.has_tokenizer or b.has_tokenizer:
        missing = name_b if a.has_tokenizer else name_a
        note = f"note: --minus: {missing} has no tokenizer.json: the vocabularies were compared by size only"
    if a.d_vocab != b.d_vocab:
        longer = name_a if a.d_vocab > b.d_vocab else name_b
        raise InputError(f"--minus: the vocabularies differ at token id {n}: {longer} has it, the other does "
                         f"not ({a.d_vocab} tokens in {name_a}, {b.d_vocab} in {name_b})",
                         "a difference needs one vocabulary")
    return note


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def join(kind: str, a: Table, b: Table, name_b: str = "CHECKPOINT2") -> Table:
    """Table ``a`` with ``delta_c = a.c − b.c`` for each score column c of ``kind``, rows matched by key."""
    keys, deltas = KEYS[kind], [c for c in DELTAS[kind] if c in a.columns]
    ka, kb = [a.columns.index(k) for k in keys], [b.columns.index(k) for k in keys]
    index = {tuple(r[i] for i in kb): r for r in b.rows()}
    ia, ib = [a.columns.index(c) for c in deltas], [b.columns.index(c) for c in deltas]
    rows = []
    for r in a.rows():
        key = tuple(r[i] for i in ka)
        other = index.get(key)
        if other is None:
            shown = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
            raise InputError(f"--minus: {name_b} has no row {shown}: the difference joins rows by "
                             f"{', '.join(keys)}, so both checkpoints need the same heads")
        rows.append(tuple(r) + tuple(float(x) - float(y) if _numeric(x) and _numeric(y) else None
                                     for x, y in ((r[i], other[j]) for i, j in zip(ia, ib))))
    short = dict(a.short)
    short.update({f"delta_{c}": "Δ" + a.short.get(c, c) for c in deltas})
    notes = list(a.notes) + [f"delta_*: this checkpoint minus {name_b}, rows joined by {', '.join(keys)}"]
    out = Table.from_rows(a.columns + [f"delta_{c}" for c in deltas], rows, title=f"{a.title} (minus {name_b})",
                          notes=notes, token_columns=a.token_columns, short=short)
    out.figures = _figure_deltas(a.figures, b.figures, name_b)
    return out


def _figure_deltas(fa: list, fb: list, name_b: str) -> list:
    """Heatmaps of A − B where both tables drew the same heatmaps (compose); else none."""
    import numpy as np

    if not fa or len(fa) != len(fb):
        return []
    out = []
    for x, y in zip(fa, fb):
        dx, dy = np.asarray(x.data, dtype=float), np.asarray(y.data, dtype=float)
        if x.kind != "heatmap" or x.title != y.title or dx.shape != dy.shape:
            return []
        out.append(Figure("heatmap", f"{x.title} minus {name_b}", dx - dy, x.rows, x.cols, x.xlabel, x.ylabel))
    return out


def minus(opts, kind: str, table: Table, compute) -> Table:
    """``table`` unchanged without --minus; else joined with ``compute(weights of CHECKPOINT2)`` (``join``)."""
    if not opts.minus:
        return table
    _, w, _ = opts.load()
    _, w2, _ = opts.load_minus()
    if kind == "neurons" and (w.cfg.n_layers, w.cfg.d_mlp) != (w2.cfg.n_layers, w2.cfg.d_mlp):
        raise InputError(f"--minus: {opts.minus} has {w2.cfg.n_layers} layers × {w2.cfg.d_mlp} neurons, this "
                         f"checkpoint {w.cfg.n_layers} × {w.cfg.d_mlp}: the neuron census difference joins rows by "
                         "layer, neuron, side, so both need the same neurons")
    if kind != "neurons" and (w.cfg.n_layers, w.cfg.n_heads) != (w2.cfg.n_layers, w2.cfg.n_heads):
        raise InputError(f"--minus: {opts.minus} has {w2.cfg.n_layers} layers × {w2.cfg.n_heads} heads, this "
                         f"checkpoint {w.cfg.n_layers} × {w.cfg.n_heads}: the {kind} difference joins rows by "
                         f"{', '.join(KEYS[kind])}, so both need the same heads")
    return join(kind, table, compute(w2), opts.minus)
