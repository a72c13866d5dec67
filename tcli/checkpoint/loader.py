"""Find a checkpoint's files and config, detect its family, and serve canonical tensors lazily."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputError
from ..model import ACT_FNS, ModelConfig, canonical_shapes
from .safetensors import SafetensorsFile, widen
from .spec import FamilySpec, detect, load_spec, read_config, rearrange

ACT_ALIASES = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new",
               "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
DEFAULT_SAMPLE = "attn-only-1l"


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
    files, folder = _safetensors_files(path)
    index: dict[str, SafetensorsFile] = {}
    metadata: dict = {}
    for file, names in files:
        st = SafetensorsFile(file)
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
    config = build_config(spec, raw_config)
    tok = folder / "tokenizer.json"
    return Checkpoint(path, config, spec, index, tok if tok.exists() else None, raw_config)


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


def _shards(index_path: Path) -> list[tuple[Path, list[str]]]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{index_path}: not a valid safetensors index (needs a 'weight_map')") from None
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    out = []
    for file, names in sorted(by_file.items()):
        shard = index_path.parent / file
        if not shard.exists():
            raise CheckpointError(f"{shard}: shard listed in {index_path.name} is missing")
        out.append((shard, names))
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _raw_config(path: Path, folder: Path, metadata: dict) -> dict:
    if "config" in metadata:
        try:
            return json.loads(metadata["config"])
        except ValueError:
            raise CheckpointError(f"{path}: __metadata__ 'config' is not JSON") from None
    if (folder / "config.json").exists():
        return _read_json(folder / "config.json")
    if (folder / "tcli.yaml").exists():
        import yaml

        try:
            data = yaml.safe_load((folder / "tcli.yaml").read_text())
        except yaml.YAMLError:
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
    for key in ("n_layers", "n_heads", "d_model", "d_vocab", "n_ctx"):
        low = 0 if key == "n_layers" else 1
        if not isinstance(values.get(key), int) or isinstance(values[key], bool) or values[key] < low:
            raise CheckpointError(f"config value {key}={values.get(key)!r} must be an integer ≥ {low}")
    values.setdefault("d_head", values["d_model"] // values["n_heads"])
    act = ACT_ALIASES.get(str(values.get("act_fn", "gelu_new")))
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
        scaling = extras.get("rope_scaling")
        if isinstance(scaling, dict):
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "linear":
                values["rotary_scale"] = float(scaling["factor"])
            elif kind not in (None, "default"):
                raise CheckpointError(f"unsupported RoPE scaling '{kind}'", "tcli computes default and linear RoPE")
    if extras.get("sliding_window") and values.get("positional") == "rotary":
        extras["sliding_window"] = int(extras["sliding_window"])
    values["family"] = spec.family
    return ModelConfig(**values, extras=extras)


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

    def _source(self, rule, layer) -> str | None:
        froms = rule.get("from") or []
        froms = [froms] if isinstance(froms, str) else list(froms)
        if "tied" in rule and (self.cfg.tied_embeddings or not froms):
            froms = froms + [rule["tied"]]
        for src in froms:
            src = src.replace("{l}", str(layer))
            for prefix in ("",) + self.ckpt.spec.prefixes:
                if prefix + src in self.ckpt.index:
                    return prefix + src
        return None

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
        file = self.ckpt.index[src]
        arr = file.read_storage(src)  # memory-mapped; rearranged in its stored (narrower) type, then widened
        if "rearrange" in rule:
            sizes = dict(h=self.cfg.n_heads, k=self.cfg.n_kv_heads, e=self.cfg.d_head, d=self.cfg.d_model,
                         m=self.cfg.d_mlp, v=self.cfg.d_vocab, n=self.cfg.n_ctx, three=3)
            try:
                arr = rearrange(arr, rule["rearrange"], sizes)
            except ValueError as exc:
                raise CheckpointError(f"tensor {src} has the wrong shape for {name}: {exc}") from None
        if "index" in rule:
            arr = arr[rule["index"]]
        if last in ("W_K", "W_V", "b_K", "b_V") and arr.shape[:1] == (self.cfg.n_kv_heads,) != (self.cfg.n_heads,):
            # query head h uses KV head h // group
            arr = np.repeat(arr, self.cfg.n_heads // self.cfg.n_kv_heads, axis=0)
        if arr.shape != shape:
            raise CheckpointError(f"tensor {src} has shape {list(arr.shape)}, expected {list(shape)} for {name}")
        arr = widen(arr, file.infos[src].dtype, self.dtype)
        file.release(src, keep=arr)
        bad = nonfinite(arr)
        if bad:
            raise CheckpointError(f"tensor {src} holds {bad} NaN/Inf values", "the checkpoint is corrupt")
        return arr

