"""Find a checkpoint's files and config, detect its family, and serve canonical tensors lazily."""

from __future__ import annotations

import json
import math
import re
import stat
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputError
from ..model import ACT_FNS, NORM_PLACEMENTS, POSITIONALS, QK_NORMS, ModelConfig, canonical_shapes, layer_rope
from .safetensors import SafetensorsFile, widen
from .spec import FamilySpec, detect, load_spec, read_config, rearrange

ACT_ALIASES = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new",
               "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
DEFAULT_SAMPLE = "attn-only-1l"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # weights must be stored as one of these


def sample_dir() -> Path:
    """The bundled ``sample_weights/`` folder (installed with the package or beside the source)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "sample_weights", here.parent / "sample_weights"):
        if candidate.is_dir():
            return candidate
    raise CheckpointError("the bundled sample_weights/ folder is missing", "reinstall tcli or pass a CHECKPOINT")


def resolve_default(name: str | None = None) -> Path:
    return sample_dir() / (name or DEFAULT_SAMPLE)


class Checkpoint:
    """A checkpoint on disk: its ModelConfig, family spec, tensor index and tokenizer path."""

    def __init__(self, path: Path, config: ModelConfig, spec: FamilySpec,
                 index: dict[str, SafetensorsFile], tokenizer_path: Path | None, raw_config: dict):
        self.path, self.config, self.spec = path, config, spec
        self.index, self.tokenizer_path, self.raw_config = index, tokenizer_path, raw_config

    def weights(self, dtype=np.float32) -> "Weights":
        return Weights(self, dtype)

    def tensor_infos(self):
        return [f.infos[name] for name, f in sorted(self.index.items())]

    @property
    def stored_dtype(self) -> str:
        kinds = sorted({f.infos[n].dtype for n, f in self.index.items()})
        return "/".join(kinds)


def open_checkpoint(path: str | Path | None = None, arch: str | Path | None = None, revision: str | None = None,
                    cache_dir: str | Path | None = None) -> Checkpoint:
    """Open a checkpoint directory, ``.safetensors`` file or cached Hugging Face model id
    (``org/name[@revision]``); None: the bundled default sample."""
    from . import hub

    if isinstance(path, str) and hub.looks_like_model_id(path):
        path = hub.resolve(path, revision, cache_dir)
    path = resolve_default() if path is None else Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory", "pass a checkpoint directory or .safetensors file")
    if not path.is_dir():
        regular_file(path, "a checkpoint")
    files, folder = _safetensors_files(path)
    index: dict[str, SafetensorsFile] = {}
    metadata: dict = {}
    for file, names in files:
        st = SafetensorsFile(regular_file(file, "a safetensors file"))
        metadata.update(st.metadata)
        for name in (names if names is not None else st.infos):
            if name not in st.infos:
                raise CheckpointError(f"{file}: the index lists tensor '{name}' but the shard does not hold it")
            index[name] = st
    raw_config = _raw_config(path, folder, metadata)
    spec = load_spec(arch) if arch else None
    if spec is not None and isinstance(_arch_values(arch), dict):
        raw_config = {**raw_config, **_arch_values(arch)}
    if spec is None:
        spec = detect(raw_config, index.keys())
    try:
        config = build_config(spec, raw_config)
    except CheckpointError:
        if raw_config:
            raise
        raise CheckpointError(f"{folder}: no config.json (nor a config in the safetensors metadata): the "
                              "model's dimensions are unknown",
                              "add the model's config.json, or describe it with --arch FILE.yaml "
                              "(docs/families.md)") from None
    tok = folder / "tokenizer.json"
    ckpt = Checkpoint(path, config, spec, index, regular_file(tok, "tokenizer.json") if tok.exists() else None,
                      raw_config)
    check_against_tensors(ckpt)
    return ckpt


def regular_file(path: Path, what: str) -> Path:
    """``path`` if it is a regular file (or a link to one): a FIFO would block forever, a directory or
    device cannot be read as ``what``."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        raise CheckpointError(f"{path}: a {kind}, not a regular file ({what} must be a file)")
    return path


def _layer_ids(ckpt: Checkpoint) -> set[int]:
    """The layer indices that the checkpoint's per-layer tensors (the spec's ``{l}`` sources) name."""
    layers: set[int] = set()
    regexes = []
    for rule in ckpt.spec.tensors.values():
        froms = rule.get("from") or []
        for src in ([froms] if isinstance(froms, str) else list(froms)) + [rule.get("tied") or ""]:
            if "{l}" in src:
                regexes.append(re.compile("(?:" + "|".join(map(re.escape, ("",) + tuple(ckpt.spec.prefixes)))
                                          + ")" + re.escape(src).replace(r"\{l\}", r"(\d+)") + "$"))
    for name in ckpt.index:
        for rx in regexes:
            m = rx.match(name)
            if m:
                layers.add(int(m.group(1)))
                break
    return layers


def unconsumed(ckpt: Checkpoint, w: "Weights") -> list[str]:
    """Tensors of the file that no layout rule reads and no ``ignore`` pattern (``{l}`` = a layer, ``*`` =
    anything, after any prefix) names: each would be a mechanism silently left out."""
    import fnmatch

    used = set()
    for name in canonical_shapes(ckpt.config):
        rule, layer = w._rule(name)
        src = w._source(rule, layer) if rule is not None else None
        if src is not None:
            used.update(w._experts(rule, layer, src) or [src])
    patterns = [re.compile("(?:" + "|".join(re.escape(p) for p in ("",) + tuple(ckpt.spec.prefixes)) + ")"
                           + fnmatch.translate(pat.replace("{l}", "[0-9]*")).replace("\\Z", "") + "$")
                for pat in ckpt.spec.ignore]
    return sorted(n for n in ckpt.index if n not in used and not any(p.match(n) for p in patterns))


def check_against_tensors(ckpt: Checkpoint) -> None:
    """Config values that contradict the file are an error, found before anything is allocated: the
    number of layers against the layer tensors present, the embedding's [d_vocab, d_model] against the
    stored embedding, and MLP weights in the file of a config without MLPs."""
    cfg = ckpt.config
    layers = _layer_ids(ckpt)
    if layers and (max(layers) + 1 != cfg.n_layers or len(layers) != cfg.n_layers):
        raise CheckpointError(f"the config says n_layers={cfg.n_layers} but the checkpoint holds tensors for "
                              f"{len(layers)} layers ({min(layers)}…{max(layers)})")
    if not layers and cfg.n_layers and any("{l}" in t for t in ckpt.spec.tensors):
        raise CheckpointError(f"the config says n_layers={cfg.n_layers} but the checkpoint holds no layer tensors")
    w = Weights(ckpt)
    rule, _ = w._rule("embed.W_E")
    src = w._source(rule, None) if rule else None
    if src is not None:
        stored = math.prod(ckpt.index[src].infos[src].shape)
        if stored != cfg.d_vocab * cfg.d_model:
            raise CheckpointError(f"tensor {src} has shape {list(ckpt.index[src].infos[src].shape)}, which "
                                  f"contradicts the config (d_vocab={cfg.d_vocab}, d_model={cfg.d_model})")
    unread = unconsumed(ckpt, w)
    if unread:
        shown = ", ".join(unread[:4]) + (f" and {len(unread) - 4} more" if len(unread) > 4 else "")
        raise CheckpointError(f"the {cfg.family} layout does not read {len(unread)} tensor(s) of this checkpoint: "
                              f"{shown}", "a mechanism tcli does not compute? If they do not change the maths, "
                              "list them under 'ignore' in a family YAML (--arch, docs/families.md)")
    if cfg.n_layers:  # layer 0's attention read once (memory-mapped): its shapes check n_heads, n_kv_heads, d_head
        for name in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_O"):
            if name in w:
                w[name]
    if cfg.n_layers and (cfg.attn_only or not cfg.d_mlp) and "blocks.0.mlp.W_in" in w \
            and w._source(w._rule("blocks.0.mlp.W_in")[0], 0) is not None:
        raise CheckpointError("the config has no MLPs (d_mlp 0 or attention-only) but the checkpoint holds MLP "
                              "weights", "fix the config's intermediate size")


def _safetensors_files(path: Path) -> tuple[list[tuple[Path, list[str] | None]], Path]:
    if path.is_file():
        if path.suffix == ".json" and path.name.endswith(".index.json"):
            return _shards(path), path.parent
        return [(path, None)], path.parent
    index = path / "model.safetensors.index.json"
    if index.exists():
        return _shards(index), path
    single = path / "model.safetensors"
    if single.exists():
        return [(single, None)], path
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return [(found[0], None)], path
    if not found:
        raise CheckpointError(f"{path}: no .safetensors file in this directory",
                              "tcli reads safetensors checkpoints; convert .bin/.pt files first")
    raise CheckpointError(f"{path}: several .safetensors files and no model.safetensors.index.json",
                          "pass one file, or add the index")


def _shard_name(index_path: Path, file) -> str:
    """A shard named by an index must be a plain relative name inside the checkpoint folder: no absolute
    path, no ``..``, no backslash or NUL (the file is not opened otherwise, nor its bytes shown)."""
    parts = Path(file).parts if isinstance(file, str) else ()
    if (not isinstance(file, str) or not file or "\\" in file or "\x00" in file or Path(file).is_absolute()
            or any(p in ("..", ".") for p in parts)):
        raise CheckpointError(f"{index_path.name}: shard name {str(file)[:80]!r} is not a file name inside the "
                              "checkpoint folder")
    return file


def _shards(index_path: Path) -> list[tuple[Path, list[str]]]:
    weight_map = _read_json(regular_file(index_path, "a safetensors index")).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: not a valid safetensors index (needs a non-empty 'weight_map' object)")
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(_shard_name(index_path, file), []).append(name)
    out = []
    for file, names in sorted(by_file.items()):
        shard = index_path.parent / file
        if not shard.exists():
            raise CheckpointError(f"{shard}: shard listed in {index_path.name} is missing")
        out.append((shard, names))
    return out


def _read_json(path: Path) -> dict:
    regular_file(path, "a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not valid JSON (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
        raise CheckpointError(f"{path}: not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _raw_config(path: Path, folder: Path, metadata: dict) -> dict:
    if "config" in metadata:
        try:
            data = json.loads(metadata["config"])
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: __metadata__ 'config' is not JSON") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: __metadata__ 'config' is not a JSON object")
        return data
    if (folder / "config.json").exists():
        return _read_json(folder / "config.json")
    if (folder / "tcli.yaml").exists():
        import yaml

        try:
            data = yaml.safe_load(regular_file(folder / "tcli.yaml", "tcli.yaml").read_text())
        except (yaml.YAMLError, RecursionError, UnicodeDecodeError):
            raise CheckpointError(f"{folder / 'tcli.yaml'}: not valid YAML") from None
        return data if isinstance(data, dict) else {}
    return {}


def _arch_values(arch) -> dict | None:
    import yaml

    data = yaml.safe_load(Path(arch).read_text())
    return data.get("values") if isinstance(data, dict) else None


def build_config(spec: FamilySpec, raw: dict) -> ModelConfig:
    """Turn a config dict into a ModelConfig with the family's rules; reject what tcli cannot compute."""
    values = read_config(spec, raw)
    names = {f.name for f in fields(ModelConfig)}
    extras = {k: values.pop(k) for k in list(values) if k not in names}
    for key in ("n_layers", "n_heads", "d_model", "d_vocab", "n_ctx", "d_head", "n_kv_heads", "d_mlp", "rotary_dim"):
        optional = key not in ("n_layers", "n_heads", "d_model", "d_vocab", "n_ctx")
        if optional and values.get(key) is None:
            values.pop(key, None)
            continue
        low = 0 if key in ("n_layers", "d_mlp", "rotary_dim") else 1
        v = values.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v < MAX_DIM:
            raise CheckpointError(f"config value {key}={str(v)[:40]!r} must be an integer ≥ {low}")
    values.setdefault("d_head", values["d_model"] // values["n_heads"])
    act = ACT_ALIASES.get(values.get("act_fn", "gelu_new")) if isinstance(values.get("act_fn", ""), str) else None
    if act not in ACT_FNS:
        raise CheckpointError(f"unsupported activation '{values.get('act_fn')}'",
                              f"tcli computes {', '.join(sorted(ACT_ALIASES))}")
    values["act_fn"] = act
    n_kv = values.get("n_kv_heads") or values["n_heads"]
    if values["n_heads"] % n_kv:
        raise CheckpointError(f"n_heads={values['n_heads']} is not a multiple of n_kv_heads={n_kv}")
    if not values.get("d_mlp"):
        values["d_mlp"] = 0
        values["attn_only"] = True
    if values.get("attn_only"):
        values["d_mlp"] = 0
    if values.get("positional") == "rotary":
        if not values.get("rotary_dim"):
            values["rotary_dim"] = int(values["d_head"] * float(extras.get("rotary_pct", 1.0)))
        if values["rotary_dim"] % 2 or not 0 < values["rotary_dim"] <= values["d_head"]:
            raise CheckpointError(f"rotary dimension {values['rotary_dim']} must be even and at most d_head")
        _global_rope(values, extras)
    values["family"] = spec.family
    if extras.get("position_rule") == "padding_offset":  # RoBERTa: forward.run; the table's first rows unused
        pad = extras.get("padding_idx")
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < values["n_ctx"] - 1:
            raise CheckpointError(f"config value pad_token_id={str(pad)[:40]!r} must be an integer 0 … "
                                  f"{values['n_ctx'] - 2} (RoBERTa's positions start at pad_token_id + 1)")
        values["n_ctx"] -= pad + 1  # the longest prompt: its last token reads the table's last row
    elif extras.get("position_rule") is not None:
        raise CheckpointError(f"unsupported position rule {str(extras['position_rule'])[:40]!r}",
                              "tcli computes padding_offset (RoBERTa's)")
    extras.update(_layer_windows(values, extras))
    if values.get("positional") == "rotary":
        extras["layer_rope"] = _layer_rope(values, extras)
    extras["moe_layers"] = _moe_layers(values, extras)
    if "query_pre_attn_scalar" in extras:  # Gemma 2/3: scores scaled by query_pre_attn_scalar^-1/2
        v = extras["query_pre_attn_scalar"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CheckpointError(f"config value query_pre_attn_scalar={str(v)[:40]!r} must be a positive number")
        values["attn_scale"] = float(v) ** -0.5
    return validate_config(ModelConfig(**values, extras=extras))


LAYER_TYPES = ("full_attention", "sliding_attention")


def _global_rope(values: dict, extras: dict) -> None:
    """The model's RoPE settings from a ``rope_scaling`` / ``rope_parameters`` dict that is not keyed by layer
    type: ``extras["rope"]`` (and ``rotary_scale`` for linear scaling)."""
    scaling = extras.get("rope_scaling")
    per_type = isinstance(scaling, dict) and scaling and set(scaling) <= set(LAYER_TYPES)
    if not isinstance(scaling, dict) or per_type:
        return
    rope = _rope_settings(scaling, values.get("rotary_base", 10000.0), values["n_ctx"], extras.get("rope_original_ctx"))
    values["rotary_scale"] = rope["scale"]
    extras["rope"] = rope
    half = values["rotary_dim"] // 2
    if rope.get("longrope") and {len(rope["longrope"]["short"]), len(rope["longrope"]["long"])} != {half}:
        raise CheckpointError(f"config rope_scaling: short_factor and long_factor must each have rotary_dim / 2 = "
                              f"{half} entries")


def _moe_layers(values: dict, extras: dict) -> tuple[int, ...]:
    """The layers whose MLP is a mixture of experts, as transformers decides (Qwen2/3-MoE): layer l unless
    it is in ``mlp_only_layers`` or (l + 1) is not a multiple of ``decoder_sparse_step`` (Mixtral: every layer)."""
    if not values.get("n_experts"):
        return ()
    step, dense = extras.get("decoder_sparse_step", 1), extras.get("mlp_only_layers") or []
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"config value decoder_sparse_step={str(step)[:40]!r} must be an integer ≥ 1")
    if not isinstance(dense, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in dense):
        raise CheckpointError(f"config value mlp_only_layers={str(dense)[:40]!r} must be a list of layer indices")
    return tuple(l for l in range(values["n_layers"]) if l not in dense and (l + 1) % step == 0)


ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor", "low_freq_factor",
             "high_freq_factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate", "attention_factor", "short_factor", "long_factor"}


def _rope_settings(scaling: dict, base, n_ctx: int = 0, original=None) -> dict:
    """{base, scale, llama3, yarn, longrope, dynamic} of one RoPE parameter dict (``rope_scaling`` or
    ``rope_parameters``), as transformers' rope init functions read it; ``n_ctx`` (max_position_embeddings)
    and ``original`` (a top-level original_max_position_embeddings) are the fall-backs they use."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    unknown = sorted(set(scaling) - ROPE_KEYS)
    if unknown:  # a key transformers' rope functions read that tcli does not would be silently left out
        raise CheckpointError(f"config rope_parameters key '{unknown[0]}' is not computed by tcli",
                              f"tcli reads {', '.join(sorted(ROPE_KEYS))}")
    out = {"base": scaling.get("rope_theta", base), "scale": 1.0, "llama3": None}
    if isinstance(out["base"], bool) or not isinstance(out["base"], (int, float)) or not out["base"] > 0:
        raise CheckpointError(f"config value rope_theta={str(out['base'])[:40]!r} must be a positive number")
    if scaling.get("original_max_position_embeddings") is None and original is not None:  # older configs: top level
        scaling = {**scaling, "original_max_position_embeddings": original}
    if kind == "linear":
        out["scale"] = _positive_number(scaling, "factor")
    elif kind == "llama3":
        out["llama3"] = {k: _positive_number(scaling, k) for k in
                         ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
        if out["llama3"]["low_freq_factor"] >= out["llama3"]["high_freq_factor"]:
            raise CheckpointError("config rope_scaling: low_freq_factor must be below high_freq_factor")
    elif kind == "dynamic":  # NTK-aware: the base grows with prompts longer than n_ctx (which tcli refuses)
        out["dynamic"] = {"factor": _positive_number(scaling, "factor"), "n_ctx": n_ctx}
    elif kind == "yarn":
        orig = _positive_number(scaling, "original_max_position_embeddings")
        factor = _positive_number(scaling, "factor") if scaling.get("factor") is not None else n_ctx / orig
        out["yarn"] = {"factor": factor, "original": orig, "truncate": scaling.get("truncate", True) is not False,
                       "beta_fast": _optional(scaling, "beta_fast", 32.0),
                       "beta_slow": _optional(scaling, "beta_slow", 1.0),
                       "attention_factor": _yarn_attention_factor(scaling, factor)}
    elif kind == "longrope":
        orig = _positive_number(scaling, "original_max_position_embeddings")
        factor = _positive_number(scaling, "factor") if scaling.get("factor") is not None else n_ctx / orig
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        out["longrope"] = {"short": _factor_list(scaling, "short_factor"), "long": _factor_list(scaling, "long_factor"),
                           "original": orig, "attention_factor": _positive_number({"a": attention}, "a")}
    elif kind not in (None, "default"):
        raise CheckpointError(f"unsupported RoPE scaling '{kind}'",
                              "tcli computes default, linear, llama3, dynamic, yarn and longrope RoPE")
    return out


def _optional(scaling: dict, key: str, default: float) -> float:
    return _positive_number(scaling, key) if scaling.get(key) else default  # transformers: `or default`


def _yarn_attention_factor(scaling: dict, factor: float) -> float:
    """YaRN's factor on cos and sin: attention_factor, else 0.1 ln(s) + 1 (with mscale / mscale_all_dim: their
    ratio), 1 for s ≤ 1 (transformers' get_mscale)."""
    if scaling.get("attention_factor") is not None:
        return _positive_number(scaling, "attention_factor")

    def mscale(s, m=1.0):
        return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if m and m_all:
        return mscale(factor, _positive_number(scaling, "mscale")) / mscale(factor, _positive_number(scaling,
                                                                                                     "mscale_all_dim"))
    return mscale(factor)


def _factor_list(scaling: dict, key: str) -> list[float]:
    v = scaling.get(key)
    ok = isinstance(v, list) and v and all(not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
                                            and x > 0 for x in v)
    if not ok:
        raise CheckpointError(f"config value rope_scaling.{key} must be a list of positive numbers")
    return [float(x) for x in v]


def _layer_rope(values: dict, extras: dict) -> list | None:
    """Per-layer RoPE settings where they differ by layer type (Gemma 3): ``rope_parameters`` keyed by layer
    type (transformers 5), or ``rope_local_base_freq`` for sliding layers beside the global settings (older
    configs, whose rope_scaling applies to the full-attention layers only). None: one setting for all."""
    scaling, local = extras.get("rope_scaling"), extras.get("rope_local_base")
    kinds = extras.get("layer_kinds")
    per_type = isinstance(scaling, dict) and scaling and set(scaling) <= set(LAYER_TYPES)
    if not per_type and local is None:
        return None
    if kinds is None:
        raise CheckpointError("per-layer RoPE settings need the layer types (config layer_types)")
    if per_type:
        missing = sorted(set(kinds) - set(scaling))
        if missing:
            raise CheckpointError(f"config rope_parameters has no entry for the layer type {missing[0]}")
        table = {t: _rope_settings(scaling[t], values.get("rotary_base", 10000.0), values["n_ctx"],
                                   extras.get("rope_original_ctx")) for t in scaling}
    else:
        table = {"full_attention": extras.get("rope") or {"base": values.get("rotary_base", 10000.0),
                                                          "scale": values.get("rotary_scale", 1.0), "llama3": None},
                 "sliding_attention": _rope_settings({"rope_theta": local}, 10000.0)}
    return [table[k] for k in kinds]


def _positive_number(scaling: dict, key: str) -> float:
    v = scaling.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CheckpointError(f"config value rope_scaling.{key}={str(v)[:40]!r} must be a positive number")
    return float(v)


def _layer_windows(values: dict, extras: dict) -> dict:
    """Per-layer sliding windows, as transformers decides them: ``layer_types`` when the config lists
    them, or Gemma's ``sliding_window_pattern`` (layer l global iff (l + 1) % pattern == 0); else none when
    ``use_sliding_window`` is false (Qwen2 checkpoints keep a ``sliding_window`` value they do not use); else
    layers from ``max_window_layers`` on (Qwen2; 0, Mistral: all). Also ``layer_kinds``: the layer types."""
    window = extras.get("sliding_window")
    n = values["n_layers"]
    types = extras.get("layer_types")
    pattern = extras.get("sliding_pattern")  # Gemma 2/3 without layer_types: every pattern-th layer is global
    neo = extras.get("attention_types")  # GPT-Neo: [[["global", "local"], repeats], …], expanded as transformers does
    if types is None and neo is not None:
        ok = isinstance(neo, list) and all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                                           and isinstance(item[1], int) and 0 <= item[1] <= n for item in neo)
        if not ok:
            raise CheckpointError("config value attention_types must be a list of [[kinds], repeats]")
        kinds = [kind for pattern_, repeats in neo for _ in range(repeats) for kind in pattern_][:n + 1]
        if len(kinds) != n or set(kinds) - {"global", "local"}:
            raise CheckpointError(f"config value attention_types must expand to global/local for each of the {n} "
                                  "layers")
        types = ["sliding_attention" if k == "local" else "full_attention" for k in kinds]
        window = extras.get("window_size")
    if types is None and pattern is not None:
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise CheckpointError(f"config value sliding_window_pattern={pattern!r} must be an integer ≥ 1")
        types = ["sliding_attention" if (l + 1) % pattern else "full_attention" for l in range(n)]
    if types is not None and (not isinstance(types, list) or len(types) != n or set(types) - set(LAYER_TYPES)):
        raise CheckpointError("config value layer_types must list full_attention or sliding_attention for each "
                              f"of the {n} layers")
    kinds = {"layer_kinds": types}
    if window == 0 and extras.get("use_sliding_window") is False and "sliding_attention" not in (types or ()):
        window = None  # Qwen2-MoE writes sliding_window 0 when use_sliding_window is false
    if window is None or window is False:
        return {"layer_windows": None, "sliding_window": None, **kinds}
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise CheckpointError(f"config value sliding_window={str(window)[:40]!r} must be a positive integer (or null)")
    if types is not None:
        return {"layer_windows": [window if t == "sliding_attention" else None for t in types], **kinds}
    use = extras.get("use_sliding_window", True)
    if not isinstance(use, bool):
        raise CheckpointError(f"config value use_sliding_window={use!r} must be true or false")
    if not use:
        return {"layer_windows": None, "sliding_window": None, **kinds}
    start = extras.get("max_window_layers") or 0
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise CheckpointError(f"config value max_window_layers={start!r} must be an integer ≥ 0")
    return {"layer_windows": [window if l >= start else None for l in range(n)]}


INTS = {"n_layers": 0, "n_heads": 1, "d_model": 1, "d_head": 1, "d_vocab": 1, "n_ctx": 1, "n_kv_heads": 1,
        "d_mlp": 0, "rotary_dim": 0, "n_token_types": 0, "n_experts": 0, "experts_per_token": 0, "d_expert": 0,
        "d_shared_expert": 0}
POSITIVE_FLOATS = ("eps", "rotary_base", "rotary_scale")
BOOLS = ("gated_mlp", "attn_only", "parallel_attn_mlp", "tied_embeddings", "causal", "final_norm", "embed_norm",
         "scale_attn", "scale_attn_by_layer", "norm_topk_prob")
CHOICES = {"norm": ("layernorm", "rmsnorm", "none"), "norm_placement": NORM_PLACEMENTS,
           "positional": POSITIONALS, "qk_norm": QK_NORMS}
NONNEGATIVE_FLOATS = ("attn_scale", "attn_softcap", "final_softcap", "clip_qkv")  # 0: off (the default)
MAX_DIM = 1 << 31  # no tensor dimension of a real checkpoint comes near this


def validate_config(cfg: ModelConfig) -> ModelConfig:
    """Every config value by type and range: integers as integers within bounds, positive finite eps,
    rotary base and scale, booleans as booleans (not the string "false"), known names for the kinds."""
    def bad(key, value, want):
        raise CheckpointError(f"config value {key}={value!r} must be {want}")

    for key, low in INTS.items():
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v < MAX_DIM:
            bad(key, v, f"an integer ≥ {low}")
    if cfg.n_kv_heads > cfg.n_heads:
        bad("n_kv_heads", cfg.n_kv_heads, f"at most n_heads={cfg.n_heads}")
    for key in POSITIVE_FLOATS:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            bad(key, v, "a positive finite number")
    for key in NONNEGATIVE_FLOATS:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad(key, v, "a finite number ≥ 0 (0: off)")
    for key in BOOLS:
        if not isinstance(getattr(cfg, key), bool):
            bad(key, getattr(cfg, key), "true or false")
    for key, names in CHOICES.items():
        if getattr(cfg, key) not in names:
            bad(key, getattr(cfg, key), "one of " + ", ".join(names))
    if cfg.positional == "alibi" and (not cfg.causal or cfg.extras.get("alibi_rounding", "float32") not in
                                      ("float32", "bfloat16") or not isinstance(cfg.extras.get("alibi_scaled"), bool)):
        bad("positional", "alibi", "causal, with alibi_rounding float32 or bfloat16 and alibi_scaled true or false")
    window = cfg.extras.get("sliding_window")
    if window is not None and window is not False and (isinstance(window, bool) or not isinstance(window, int)
                                                         or window <= 0):
        bad("sliding_window", window, "a positive integer (or null)")
    if cfg.n_experts:
        _check_moe(cfg, bad)
    return cfg


def _check_moe(cfg: ModelConfig, bad) -> None:
    """A mixture-of-experts config tcli computes: top-k of at most n_experts, positive expert widths, gated
    experts in a pre-RMSNorm model (the router, the experts and the shared expert read ln2's output)."""
    if not 1 <= cfg.experts_per_token <= cfg.n_experts:
        bad("experts_per_token", cfg.experts_per_token, f"between 1 and n_experts={cfg.n_experts}")
    if cfg.extras.get("moe_layers") and not cfg.d_expert:
        bad("d_expert", cfg.d_expert, "an integer ≥ 1 (the experts' hidden width)")
    if not cfg.gated_mlp or cfg.attn_only or cfg.norm != "rmsnorm" or cfg.norm_placement != "pre" \
            or cfg.parallel_attn_mlp:
        raise CheckpointError("mixture-of-experts MLPs are computed for pre-RMSNorm models with gated experts only "
                              f"(this {cfg.family} config: norm {cfg.norm}, placement {cfg.norm_placement})")


def rotary_permutation(rotary_dim: int, d_head: int) -> np.ndarray:
    """Head coordinates in rotate-half order: interleaved rotary pairs (2i, 2i + 1) (GPT-J, Cohere) become
    (i, i + rotary_dim/2). The same permutation of q's and k's coordinates leaves every score q·k unchanged."""
    return np.concatenate([np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2), np.arange(rotary_dim, d_head)])


def rope_attention_factor(cfg: ModelConfig, layer: int | None) -> float:
    """YaRN's / LongRoPE's attention factor of layer ``layer``'s RoPE: transformers multiplies cos and sin by
    it, which is the same as multiplying the rotary coordinates of q and k by it (rotation is linear), so tcli
    folds it into W_Q, b_Q, W_K, b_K (or the QK-norm weights) when they are read: exact for the forward pass
    and for every QK circuit. 1 for other RoPE types."""
    if cfg.positional != "rotary":
        return 1.0
    rope = layer_rope(cfg, layer)
    for kind in ("yarn", "longrope"):
        if rope.get(kind):
            return float(rope[kind]["attention_factor"])
    return 1.0


def nonfinite(arr: np.ndarray, chunk: int = 1 << 24) -> int:
    """How many NaN/Inf values ``arr`` holds (floating point only), counted in chunks (no full-size mask)."""
    if arr.dtype.kind != "f":
        return 0
    flat = arr.reshape(-1)
    parts = (flat[i:i + chunk] for i in range(0, flat.size, chunk))
    return sum(part.size - int(np.count_nonzero(np.isfinite(part))) for part in parts)


class Weights:
    """Canonical tensors of a checkpoint, read on first use and cached (``w["blocks.0.attn.W_Q"]``)."""

    def __init__(self, ckpt: Checkpoint, dtype=np.float32):
        self.ckpt, self.cfg, self.dtype = ckpt, ckpt.config, np.dtype(dtype)
        self.shapes = canonical_shapes(self.cfg)
        self._cache: dict[str, np.ndarray] = {}
        self._rules = []
        # where the RoPE attention factor goes: after QK-norm when there is one (it would normalise it away)
        self._rope_scaled = ("q_norm_w", "k_norm_w") if self.cfg.qk_norm != "none" else ("W_Q", "W_K", "b_Q", "b_K")
        for template, rule in ckpt.spec.tensors.items():
            pattern = re.escape(template).replace(r"\{l\}", r"(\d+)")
            self._rules.append((re.compile(pattern + "$"), rule))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def evict(self, name: str) -> None:
        """Forget a cached tensor (it is read again on next use)."""
        self._cache.pop(name, None)

    def take(self, name: str) -> np.ndarray:
        """Tensor ``name`` as an array the caller owns and may overwrite; the cache forgets it."""
        if name in self._cache:  # someone may hold the cached array: hand over a copy
            return self._cache.pop(name).copy()
        arr = self._load(name)
        return arr if arr.flags.writeable else arr.copy()  # a read-only memory map: copy once

    def __contains__(self, name: str) -> bool:
        rule, layer = self._rule(name)
        return rule is not None and (self._source(rule, layer) is not None or "missing" in rule)

    def _rule(self, name):
        for regex, rule in self._rules:
            m = regex.match(name)
            if m:
                return rule, int(m.group(1)) if m.groups() else None
        return None, None

    def _number(self, expr, what: str) -> float:
        """A rule's ``offset``/``scale``: a number, or an expression over the config's values."""
        from .spec import evaluate

        value = evaluate(expr, {**self.cfg.as_dict(), **self.cfg.extras})
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"the {self.cfg.family} layout's {what} '{expr}' is not a finite number")
        return float(value)

    def _rows(self, expr, what: str, most: int, src: str) -> int:
        """A rule's ``index``/``drop_rows``: an integer 0 … ``most``, or an expression over config values."""
        value = self._number(expr, what) if isinstance(expr, str) else expr
        if value != int(value) or not 0 <= value <= most:
            raise CheckpointError(f"tensor {src}: the {self.cfg.family} layout's {what} '{expr}' is {value:g}, "
                                  f"not an integer 0 … {most}")
        return int(value)

    def _source(self, rule, layer) -> str | None:
        froms = rule.get("from") or []
        froms = [froms] if isinstance(froms, str) else list(froms)
        if "tied" in rule and (self.cfg.tied_embeddings or not froms):
            froms = froms + [rule["tied"]]
        for src in froms:
            src = src.replace("{l}", str(layer)).replace("{e}", "0")  # {e}: expert 0 of a stacked rule
            for prefix in ("",) + self.ckpt.spec.prefixes:
                if prefix + src in self.ckpt.index:
                    return prefix + src
        return None

    def _experts(self, rule, layer, src: str) -> list[str] | None:
        """The stored names of every expert when ``src`` (from ``_source``) came from a ``{e}`` template
        (expert e of n_experts, stacked on a new first axis), else None."""
        froms = rule.get("from") or []
        for tpl in [froms] if isinstance(froms, str) else froms:
            if "{e}" in tpl:
                tpl = tpl.replace("{l}", str(layer))
                for prefix in ("",) + self.ckpt.spec.prefixes:
                    if prefix + tpl.replace("{e}", "0") == src:
                        return [prefix + tpl.replace("{e}", str(e)) for e in range(self.cfg.n_experts)]
        return None

    def _reshape(self, arr: np.ndarray, rule: dict, name: str, src: str) -> np.ndarray:
        """The stored tensor ``src`` in ``name``'s canonical layout: slice, rearrange, index, drop_rows, K/V
        expansion, rotary_pairs (docs/families.md)."""
        last = name.rsplit(".", 1)[-1]
        if "slice" in rule:  # rows [start, stop) of the first axis: one part of a fused tensor of unequal parts
            start, stop, *every = (int(self._number(x, f"{name} slice")) for x in rule["slice"])
            every = every[0] if every else arr.shape[0]  # [start, stop, every]: in each block of `every` rows
            if not 0 <= start < stop <= every or arr.shape[0] % every:
                raise CheckpointError(f"tensor {src} has {arr.shape[0]} rows, which do not hold rows {start}:{stop} "
                                      f"of blocks of {every} ({name})")
            arr = arr.reshape(arr.shape[0] // every, every, *arr.shape[1:])[:, start:stop]
            arr = arr.reshape(-1, *arr.shape[2:])
        if "rearrange" in rule:
            sizes = dict(h=self.cfg.n_heads, k=self.cfg.n_kv_heads, e=self.cfg.d_head, d=self.cfg.d_model,
                         m=self.cfg.d_mlp, v=self.cfg.d_vocab, n=self.cfg.n_ctx, three=3)
            try:
                arr = rearrange(arr, rule["rearrange"], sizes)
            except ValueError as exc:
                raise CheckpointError(f"tensor {src} has the wrong shape for {name}: {exc}") from None
        if "index" in rule:  # an integer, or an expression over config values (RoBERTa's padding_idx)
            index = rule["index"]
            arr = arr[self._rows(index, f"{name} index", arr.shape[0] - 1, src) if isinstance(index, str) else index]
        if rule.get("drop_rows"):  # e.g. OPT's learned positions start at row 2 (RoBERTa's: padding_idx + 1)
            arr = arr[self._rows(rule["drop_rows"], f"{name} drop_rows", arr.shape[0], src):]
        kv = ("W_K", "W_V", "b_K", "b_V") + (("k_norm_w",) if self.cfg.qk_norm in ("full", "head_layernorm") else ())
        if last in kv and arr.shape[:1] == (self.cfg.n_kv_heads,) != (self.cfg.n_heads,):
            # query head h uses KV head h // group
            arr = np.repeat(arr, self.cfg.n_heads // self.cfg.n_kv_heads, axis=0)
        if "rotary_pairs" in rule:
            arr = arr[..., rotary_permutation(self.cfg.rotary_dim, arr.shape[-1])]
        return arr

    def _load(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise InputError(f"unknown tensor name '{name}'")
        shape = self.shapes[name]
        rule, layer = self._rule(name)
        if layer is not None and layer >= self.cfg.n_layers:
            raise InputError(f"layer {layer} out of range (the model has {self.cfg.n_layers})")
        last = name.rsplit(".", 1)[-1]
        if rule is None:
            if last.startswith("b"):  # a bias this family does not have
                return np.zeros(shape, self.dtype)
            raise CheckpointError(f"the {self.cfg.family} layout has no tensor for '{name}'")
        src = self._source(rule, layer)
        if src is None:
            if rule.get("missing") in ("zeros", "ones"):
                return (np.zeros if rule["missing"] == "zeros" else np.ones)(shape, self.dtype)
            wanted = rule.get("from") or rule.get("tied")
            raise CheckpointError(f"checkpoint has no tensor {wanted!r} (needed for {name})".replace("{l}", str(layer)))
        experts = self._experts(rule, layer, src)
        if experts is not None:
            missing = [n for n in experts if n not in self.ckpt.index]
            if missing:
                raise CheckpointError(f"checkpoint has no tensor {missing[0]!r} (the config says "
                                      f"n_experts={self.cfg.n_experts}; needed for {name})")
            arr = np.stack([self._read(rule, name, src_e, layer) for src_e in experts])
            if arr.shape != shape:
                raise CheckpointError(f"tensors {experts[0]}… stack to shape {list(arr.shape)}, expected "
                                      f"{list(shape)} for {name}")
            return arr
        return self._read(rule, name, src, layer, shape)

    def _read(self, rule, name: str, src: str, layer, shape=None) -> np.ndarray:
        """One stored tensor in ``name``'s layout, widened to the compute dtype (``shape``: checked)."""
        last = name.rsplit(".", 1)[-1]
        file = self.ckpt.index[src]
        if file.infos[src].dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor {src} is stored as {file.infos[src].dtype}, not as floating point weights")
        arr = self._reshape(file.read_storage(src), rule, name, src)  # memory-mapped; rearranged in its stored
        # (narrower) type, then widened
        if shape is not None and arr.shape != shape:
            raise CheckpointError(f"tensor {src} has shape {list(arr.shape)}, expected {list(shape)} for {name}")
        arr = widen(arr, file.infos[src].dtype, self.dtype)
        factor = rope_attention_factor(self.cfg, layer) if last in self._rope_scaled else 1.0
        if factor != 1.0:  # YaRN / LongRoPE multiply cos and sin (so q's and k's rotary coordinates) by it
            scale = np.ones(arr.shape[-1], self.dtype)
            scale[:self.cfg.rotary_dim] = factor
            arr = arr * scale  # a new array: ``arr`` may be the read-only memory map
        for key in ("offset", "scale"):  # Gemma's norm weights 1 + w; embedding and residual multipliers
            if key in rule:
                value = self.dtype.type(self._number(rule[key], f"{name} {key}"))
                arr = arr + value if key == "offset" else arr * value
        file.release(src, keep=arr)
        bad = nonfinite(arr)
        if bad:
            raise CheckpointError(f"tensor {src} holds {bad} NaN/Inf values", "the checkpoint is corrupt")
        return arr

