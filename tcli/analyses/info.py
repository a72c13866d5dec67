"""``info``: what tcli read from a checkpoint (SPEC §5 keys), and its tensor list."""

from __future__ import annotations

import numpy as np

from ..output.table import Table
from .. import columns

INFO_COLUMNS = columns.INFO


def info_record(ckpt, w) -> dict:
    cfg = ckpt.config
    n_params = sum(int(np.prod(f.infos[n].shape)) for n, f in ckpt.index.items())
    steps = getattr(w, "steps", ())
    return {
        "family": cfg.family, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
        "d_model": cfg.d_model, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx, "norm": cfg.norm, "positional": cfg.positional, "act_fn": cfg.act_fn,
        "attn_only": cfg.attn_only, "parallel_attn_mlp": cfg.parallel_attn_mlp,
        "tied_embeddings": cfg.tied_embeddings, "dtype": ckpt.stored_dtype,
        "processing": ",".join(steps) if steps else "none",
        "tokenizer": str(ckpt.tokenizer_path) if ckpt.tokenizer_path else None, "n_params": n_params,
        "norm_placement": cfg.norm_placement,
        "rotary_dim": cfg.rotary_dim if cfg.positional == "rotary" else None,
        "rotary_base": cfg.rotary_base if cfg.positional == "rotary" else None,
        "unembed": unembed_note(ckpt),
        "compute_dtype": str(w.dtype), "path": str(ckpt.path),
        "approximations": "; ".join(approximations(w)) or "none",
    }


def unembed_note(ckpt) -> str:
    """Where W_U comes from, and the factor folded into it (Cohere's logit_scale, Granite's 1 / logits_scaling)."""
    cfg = ckpt.config
    note = cfg.unembed_note or ("tied to W_E" if cfg.tied_embeddings else "separate W_U")
    scale = (ckpt.spec.tensors.get("unembed.W_U") or {}).get("scale")
    return note + (f", times {scale}" if scale is not None else "")


def approximations(w) -> list[str]:
    """What weight circuits fold or leave out for this model (``ProcessedWeights.notes``; docs/families.md)."""
    from ..processing import circuit_notes

    notes = getattr(w, "notes", None)
    return list(notes) if notes is not None else circuit_notes(w.cfg, ())


def info_table(ckpt, w) -> Table:
    """The SPEC §5 record; what circuits approximate for this model follows as notes (stderr), one per line."""
    rec = info_record(ckpt, w)
    notes = [f"circuits: {n}" for n in approximations(w)]
    return Table.from_rows(INFO_COLUMNS, [[rec[c] for c in INFO_COLUMNS]], title=f"{ckpt.path}", record=True,
                           notes=notes)


def tensors_table(ckpt) -> Table:
    rows = [(i.name, i.dtype, "x".join(map(str, i.shape)), int(np.prod(i.shape))) for i in ckpt.tensor_infos()]
    return Table.from_rows(columns.TENSORS, rows, title=f"{ckpt.path}: tensors")
