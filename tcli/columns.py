"""The columns of every table, in one place: the analyses build their tables from these lists, and the
help texts and docs/commands.md are generated from them (``tools/gen_docs.py``; CI checks the docs).

Light on purpose (no numpy): the CLI reads it to write ``--help``.
"""

INFO = ["family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "norm",
        "positional", "act_fn", "attn_only", "parallel_attn_mlp", "tied_embeddings", "dtype", "processing",
        "tokenizer", "n_params", "norm_placement", "rotary_dim", "rotary_base", "unembed", "compute_dtype", "path",
        "approximations"]  # what weight circuits leave out for this model ("none": exact); docs/families.md
TENSORS = ["name", "dtype", "shape", "n_params"]
BIGRAM = ["src_id", "src_token", "rank", "dst_id", "dst_token", "value"]
OV = ["layer", "head", "src_id", "src_token", "rank", "out_id", "out_token", "value"]
QK = ["layer", "head", "query_id", "query_token", "rank", "key_id", "key_token", "value"]
DIAGONAL = ["token_id", "token", "value", "row_rank"]  # --diagonal: M[t, t] and its rank in row t


def via(cols: list[str]) -> list[str]:
    """A path circuit's columns (``--via``, ``--key-via``, ``--query-via``): via_layer, via_head after head."""
    i = cols.index("head") + 1
    return cols[:i] + ["via_layer", "via_head"] + cols[i:]


OV_DIAGONAL, QK_DIAGONAL = ["layer", "head"] + DIAGONAL, ["layer", "head"] + DIAGONAL
SKIPTRIGRAM = ["layer", "head", "rank", "src_id", "src_token", "dst_id", "dst_token", "out_id", "out_token",
               "qk", "ov", "score", "z_qk", "z_ov"]
SPECTRUM = ["circuit", "layer", "head", "index", "singular_value", "cumulative_variance"]
SPECTRUM_TOKENS = ["circuit", "layer", "head", "index", "singular_value", "side", "rank", "token_id", "token",
                   "weight"]
EIGEN = ["circuit", "layer", "head", "index", "real", "imag", "abs"]
HEADS = ["layer", "head", "copying_score", "wov_copying_score", "ov_frobenius", "qk_frobenius",
         "ov_top_singular_value", "ov_effective_rank", "prev_token_score", "induction_score", "wov_frobenius",
         "wqk_frobenius", "ov_diagonal_top1"]
COMPOSE = ["kind", "layer1", "head1", "layer2", "head2", "score", "baseline"]
DECOMPOSE = ["component", "layer", "head", "value", "label"]
LENS = ["layer", "position", "rank", "token_id", "token", "logit"]
ATTENTION = ["layer", "head", "dst_pos", "dst_token", "rank", "src_pos", "src_token", "weight"]
NEURONS = ["layer", "neuron", "side", "rank", "token_id", "token", "value"]
CENSUS = ["layer", "neuron", "side", "rank", "z_score", "top_id", "top_value", "mean", "std", "in_norm",
          "gate_norm", "out_norm", "top_tokens"]  # gate_norm: gated MLPs only

# command -> [(when, columns)]: the first entry is the default table
TABLES = {
    "info": [("", INFO), ("--tensors", TENSORS)],
    "bigram": [("", BIGRAM), ("--diagonal", DIAGONAL)],
    "ov": [("", OV), ("--via", via(OV)), ("--diagonal", OV_DIAGONAL), ("--via --diagonal", via(OV_DIAGONAL))],
    "qk": [("", QK), ("--key-via/--query-via", via(QK)), ("--diagonal", QK_DIAGONAL),
           ("--key-via/--query-via --diagonal", via(QK_DIAGONAL))],
    "skiptrigram": [("", SKIPTRIGRAM)],
    "spectrum": [("", SPECTRUM), ("--eigen", EIGEN), ("--tokens", SPECTRUM_TOKENS)],
    "heads": [("", HEADS)],
    "compose": [("", COMPOSE)],
    "decompose": [("", DECOMPOSE), ("--neurons", DECOMPOSE + ["neuron"])],
    "lens": [("", LENS)],
    "attention": [("", ATTENTION)],
    "neurons": [("named neurons, --all", NEURONS), ("the census", CENSUS)],
}


def describe(command: str) -> str:
    """One sentence naming a command's columns, for its --help and docs/commands.md."""
    parts = []
    for when, cols in TABLES[command]:
        listed = ", ".join(cols)
        parts.append(f"{when}: {listed}" if when else listed)
    return "Columns: " + "; ".join(parts) + "."
