"""``decompose``, ``lens``, ``attention``: what a forward pass on a prompt writes into the residual stream.

Direct logit attribution (decompose). At position p the final residual is a sum of pieces, each
written once: the token, position (and token-type) embeddings, each head's output z_h W_O^h, each
attention-output bias b_O, each MLP's output, and each norm's bias. Every norm is replaced by its
frozen linear map from the real run, x ↦ (x − mean(x)) · s · w (RMSNorm: x · s · w), so each
piece passes through every norm after it exactly as the real run scaled it (post-norm models: the
norm after every sublayer; sandwich/sublayer norms: the norm on the output of the piece's own
sublayer). The logit of a target token t (or the difference t − u) is

    logit = Σ_pieces piece · (W_U[:, t] − W_U[:, u]) + (b_U[t] − b_U[u])

and equals the model's own logit up to float error (soft-capped models: the logit before the final
cap c·tanh(logit / c), which is not linear; a note gives the capped one). Processing keeps the raw model's logits
(no unembedding centring), so the total is the unprocessed model's logit.

Per-neuron attribution (``--neurons N``). An MLP's piece is Σ_n a_n W_out[n] + b_out, with a [m] the
post-activation hidden (gated: act(x W_gate) · (x W_in)) at p; its n-th term passes through the same later
norms, so its contribution is a_n (W_out[n] → later norms) · u. The N terms with the largest |value|
per layer are rows ``neuron``; the other m − N terms plus b_out are one ``mlp_rest`` row, so rows still
sum to the layer's ``mlp`` value and the total is unchanged.

Mixture-of-experts layers: the MLP's piece is Σ_j p_j expert_j(x) (+ the gated shared expert), so the layer
gives one row per expert that fired at p (component ``expert``, label ``mlp L expert E``, its router weight
included) and one ``shared_expert`` row; they sum to the layer's MLP output. ``--neurons`` is refused there.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..forward import Cache, Norm, run
from ..model import has_moe
from ..output.table import Figure, Table
from .. import columns

DECOMPOSE_COLUMNS, LENS_COLUMNS = columns.DECOMPOSE, columns.LENS
HEATMAPS = 8  # attention heatmaps drawn in table mode (all of them go to --plot)
ATTENTION_COLUMNS = columns.ATTENTION


def check_prompt(cfg, tokens) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size == 0:
        raise InputError("the prompt encodes to no tokens")
    if tokens.size > cfg.n_ctx:
        raise InputError(f"the prompt has {tokens.size} tokens, more than the model's context of {cfg.n_ctx}")
    return tokens


def check_position(position: int, T: int) -> int:
    p = position + T if position < 0 else position
    if not 0 <= p < T:
        raise InputError(f"position {position} out of range for a prompt of {T} tokens",
                         f"0 … {T - 1}, or -1 for the last")
    return p


def pieces(cache: Cache, cfg, p: int, w=None) -> list[tuple[str, int | None, int | None, str, np.ndarray]]:
    """(component, layer, head, label, vector [d]) pieces whose sum is the final residual at p,
    each pushed through every later norm's frozen map. With ``w`` (processed weights), each MLP is two
    pieces: ``mlp_neurons`` [m, d] (row n = a_n W_out[n]) and ``mlp_bias`` (b_out). A norm on a sublayer's
    output (sandwich / sublayer blocks) maps that sublayer's pieces only; a post-norm (BERT) maps all."""
    out: list = []
    w = getattr(w, "forward_view", w)

    def through(norm: Norm, label: str, layer, parts: list) -> list:
        return [(c, l, h, lab, norm.apply(v, p)) for c, l, h, lab, v in parts] + \
            [("norm_bias", layer, None, label, norm.b)]

    out.append(("embed", None, None, "embed", cache.embed[p]))
    if cfg.positional == "learned":
        out.append(("pos_embed", None, None, "pos_embed", cache.pos_embed[p]))
    if cfg.n_token_types:
        out.append(("token_type_embed", None, None, "token_type_embed", cache.type_embed[p]))
    if cache.embed_norm is not None:
        out[:] = through(cache.embed_norm, "embed.ln.b", None, out)
    post = cfg.norm_placement == "post"
    for l, layer in enumerate(cache.layers):
        attn = [("head", l, h, f"{l}.{h}", layer.head_out[h, p]) for h in range(cfg.n_heads)]
        attn.append(("attn_bias", l, None, f"b_O {l}", layer.attn_bias))
        out += through(layer.attn_post, f"ln1_post.b {l}", l, attn) if layer.attn_post is not None else attn
        if post:
            out[:] = through(layer.ln1, f"ln1.b {l}", l, out)
        if cfg.attn_only:
            continue
        if layer.moe is not None:
            r = layer.moe
            mlp = [("expert", l, None, f"mlp {l} expert {e}", r.expert_out[p, j]) for j, e in enumerate(r.experts[p])]
            if r.shared_out is not None:
                mlp.append(("shared_expert", l, None, f"mlp {l} shared expert", r.shared_out[p]))
        elif w is not None:
            W_out = w[f"blocks.{l}.mlp.W_out"]
            mlp = [("mlp_neurons", l, None, f"mlp {l}", layer.mlp_act[p][:, None] * W_out),
                   ("mlp_bias", l, None, f"b_out {l}", w[f"blocks.{l}.mlp.b_out"])]
        else:
            mlp = [("mlp", l, None, f"mlp {l}", layer.mlp_out[p])]
        out += through(layer.mlp_post, f"ln2_post.b {l}", l, mlp) if layer.mlp_post is not None else mlp
        if post:
            out[:] = through(layer.ln2, f"ln2.b {l}", l, out)
    if cache.final_norm is not None:
        out[:] = through(cache.final_norm, "ln_final.b", None, out)
    return out


def _neuron_rows(parts, u, n_top: int) -> list:
    """Rows of the per-neuron split (module doc): (component, layer, head, value, label, neuron)."""
    rows, rest = [], {}
    for c, l, h, lab, v in parts:
        if c == "mlp_neurons":
            vals = v @ u  # [m]
            top = np.argsort(-np.abs(vals), kind="stable")[:n_top]
            rows += [("neuron", l, None, float(vals[n]), f"{l}.{n}", int(n)) for n in top]
            rest[l] = rest.get(l, 0.0) + float(np.sum(np.delete(vals, top), dtype=np.float64))
        elif c == "mlp_bias":
            rest[l] = rest.get(l, 0.0) + float(v @ u)
        elif c != "norm_bias" or v.any():
            rows.append((c, l, h, float(v @ u), lab, None))
    rows += [("mlp_rest", l, None, value, f"mlp {l} rest", None) for l, value in rest.items()]
    return rows


def decompose(w, vocab, tokens, position: int, target: int | None, minus: int | None = None,
              neurons: int | None = None) -> Table:
    """Direct logit attribution of logit(target) (− logit(minus)) at ``position``; see module doc.
    ``target`` None: the model's top prediction at that position. ``neurons``: split each MLP into its
    top-N neurons and ``mlp_rest`` (extra column ``neuron``)."""
    cfg = w.cfg
    tokens = check_prompt(cfg, tokens)
    p = check_position(position, len(tokens))
    cache = run(w, tokens)
    if target is None:
        target = int(cache.logits[p].argmax())
    u = w["unembed.W_U"][:, target] - (w["unembed.W_U"][:, minus] if minus is not None else 0)
    bias = w["unembed.b_U"][target] - (w["unembed.b_U"][minus] if minus is not None else 0)
    # a norm bias that is exactly zero (e.g. folded into b_U by processing) contributes nothing: no row
    if neurons is not None:
        if cfg.attn_only or not cfg.d_mlp:
            raise InputError("--neurons: this model is attention-only: it has no MLP neurons")
        if has_moe(cfg):
            raise InputError(f"--neurons: this {cfg.family} model's MLPs are mixtures of experts: per-neuron "
                             "attribution is not computed for them (without --neurons: one row per expert)")
        rows = _neuron_rows(pieces(cache, cfg, p, w), u, neurons)
    else:
        rows = [(c, l, h, float(v @ u), lab) for c, l, h, lab, v in pieces(cache, cfg, p)
                if c != "norm_bias" or v.any()]
    extra = (None,) if neurons is not None else ()
    rows.append(("unembed_bias", None, None, float(bias), "b_U") + extra)
    total = float(np.sum([r[3] for r in rows], dtype=np.float64))
    def logit(arr):
        return float(arr[p, target] - (arr[p, minus] if minus is not None else 0))

    model = logit(cache.logits_precap)
    rows.sort(key=lambda r: -abs(r[3]))
    rows.append(("total", None, None, total, "total") + extra)
    what = f"logit[{vocab.string(target)!r}]" + (f" − logit[{vocab.string(minus)!r}]" if minus is not None else "")
    capped = " before the final soft-cap" if cfg.final_softcap else ""
    notes = [f"position {p} (token {vocab.string(int(tokens[p]))!r}): components sum to {total:.6g}; "
             f"the model's {what}{capped} is {model:.6g} (difference {total - model:.2g})"]
    ties = [l for l, layer in enumerate(cache.layers) if layer.moe is not None and layer.moe.tied is not None
            and layer.moe.tied[p]]
    if ties:
        notes.append(f"router ties at layer(s) {', '.join(map(str, ties))}: the k-th and next expert are exactly "
                     "equally probable there; tcli takes the lower expert index (torch.topk's choice among ties may "
                     "differ)")
    if cfg.final_softcap:
        notes.append(f"the model's logits are soft-capped, c·tanh(logit / c) with c = {cfg.final_softcap:g}: "
                     f"its {what} after the cap is {logit(cache.logits):.6g}; the components add up to the "
                     "logit before the cap (the cap is not linear)")
    columns = DECOMPOSE_COLUMNS + (["neuron"] if neurons is not None else [])
    return Table.from_rows(columns, rows, title=f"Direct logit attribution of {what} at position {p}",
                           notes=notes, bar="value")


def lens_logits(w, cache: Cache, positions=None):
    """Yield (layer, logits [T', V]) of the residual stream after the embeddings (layer −1) and each
    block at ``positions`` (default all), decoded through the final norm computed afresh on that
    residual (its own scale), then the final soft-cap where the model has one. One layer at a time:
    memory O(T' · V), not O(L · T · V)."""
    from ..forward import norm, softcap

    w = getattr(w, "forward_view", w)
    cfg = w.cfg
    for layer, x in [(-1, cache.resid_embed)] + list(enumerate(cache.resid_post)):
        if positions is not None:
            x = x[positions]
        if cache.final_norm is not None:
            x, _ = norm(cfg, x, w["ln_final.w"], w["ln_final.b"])
        yield layer, softcap(x @ w["unembed.W_U"] + w["unembed.b_U"], cfg.final_softcap)


def lens(w, vocab, tokens, k: int = 5, position: int | None = None) -> Table:
    from ..core.stream import select_topk

    cfg = w.cfg
    tokens = check_prompt(cfg, tokens)
    positions = np.arange(len(tokens)) if position is None else np.array([check_position(position, len(tokens))])
    strings = np.array(vocab.strings(), dtype=object)
    cache = run(w, tokens)

    def chunks():  # streamed: one layer's [T', V] logits at a time
        for layer, logits in lens_logits(w, cache, positions):
            vals, ids = select_topk(logits, k)
            kk = vals.shape[1]
            yield {"layer": np.full(len(positions) * kk, layer), "position": np.repeat(positions, kk),
                   "rank": np.tile(np.arange(1, kk + 1), len(positions)), "token_id": ids.ravel(),
                   "token": strings[ids.ravel()], "logit": vals.ravel()}

    return Table(LENS_COLUMNS, chunks(), title="Logit lens (layer -1 = embeddings)", token_columns=("token",))


def attention(w, vocab, tokens, heads, k: int = 3, position: int | None = None) -> Table:
    from ..core.stream import select_topk

    tokens = check_prompt(w.cfg, tokens)
    T = len(tokens)
    cache = run(w, tokens)
    dst = np.arange(T) if position is None else np.array([check_position(position, T)])
    strings = np.array(vocab.strings(), dtype=object)[tokens]
    chunks = []
    for l, h in heads:
        vals, src = select_topk(cache.pattern[l][h][dst], k)
        kk = vals.shape[1]
        keep = vals.ravel() > 0  # causal masks give exact zeros: not a source
        d = np.repeat(dst, kk)[keep]
        s = src.ravel()[keep]
        chunks.append({"layer": np.full(keep.sum(), l), "head": np.full(keep.sum(), h), "dst_pos": d,
                       "dst_token": strings[d], "rank": np.tile(np.arange(1, kk + 1), len(dst))[keep],
                       "src_pos": s, "src_token": strings[s], "weight": vals.ravel()[keep]})
    table = Table(ATTENTION_COLUMNS, chunks, title="Attention patterns (top sources per destination)",
                  token_columns=("dst_token", "src_token"))
    from ..output.table import visible

    labels = [f"{i} {visible(t)}"[:14] for i, t in enumerate(strings)]
    table.figures = [Figure("heatmap", f"head {l}.{h} attention (rows: destination, columns: source position)",
                            cache.pattern[l][h], labels, [str(i) for i in range(T)], "source position",
                            "destination") for l, h in heads[:HEATMAPS]]
    if len(heads) > HEATMAPS:
        table.notes.append(f"heatmaps: the first {HEATMAPS} of {len(heads)} selected heads are drawn "
                           f"({len(heads) - HEATMAPS} left out); choose heads with --head L.H or draw all with --plot")
    return table
