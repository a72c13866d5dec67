"""Family specs: one YAML file per family says how to detect it, read its config and map its tensors.

A spec (see ``families/*.yaml`` and docs/families.md) has:
  family:   name
  extends:  another family whose keys this one inherits (optional)
  detect:   {model_type: [...], architectures: [...], tensors: [...]}  (any match detects)
  prefixes: name prefixes tried before each source name (e.g. ``transformer.``)
  config:   ModelConfig field -> config.json key, or {keys: [k, a.b], default: expr, map: {...}}
  fixed:    ModelConfig field -> constant
  tensors:  canonical name (``{l}`` = layer) -> {from: src | [srcs], tied: src,
            slice: [start, stop] | [start, stop, every], rearrange: pattern, index: i, missing: zeros | ones,
            drop_rows: n,
            rotary_pairs: interleaved, offset: expr, scale: expr}  (applied in that order; docs/families.md)
A ``{e}`` in a ``from`` name stacks experts: the names for e = 0 … n_experts − 1 are read, each through
the rule's steps, and stacked on a new first axis (mixture-of-experts layers: [E, …]); ``{e}`` only in ``from``.
``slice: [start, stop, every]`` takes rows [start, stop) of each consecutive block of ``every`` rows (a
fused tensor laid out per group, e.g. Falcon's [groups × (q heads, k, v)]; the parts keep their order).
Rearrange patterns use einops grammar with the sizes h=n_heads, k=n_kv_heads, e=d_head,
d=d_model, m=d_mlp, v=d_vocab, n=n_ctx, three=3.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from ..errors import CheckpointError, InputError

FAMILY_DIR = Path(__file__).parent / "families"
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where installed: ~10x faster


@dataclass(frozen=True)
class FamilySpec:
    family: str
    detect: dict
    prefixes: tuple[str, ...]
    config: dict
    fixed: dict
    tensors: dict
    source: str
    ignore: tuple[str, ...] = ()
    inert: tuple[str, ...] = ()

    def config_keys(self) -> set[str]:
        """The top-level config.json keys this family reads (its config rules' keys, before any dot)."""
        out = set()
        for rule in self.config.values():
            keys = [rule] if isinstance(rule, str) else rule.get("keys", [])
            out.update(k.split(".")[0] for k in ([keys] if isinstance(keys, str) else keys))
        return out

    def matches(self, config: dict, tensor_names) -> bool:
        if config.get("model_type") in self.detect.get("model_type", []):
            return True
        if set(config.get("architectures") or []) & set(self.detect.get("architectures", [])):
            return True
        if not config.get("model_type"):
            for marker in self.detect.get("tensors", []):
                if any(name == p + marker for p in ("",) + self.prefixes for name in tensor_names):
                    return True
        return False


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except OSError as exc:
        raise InputError(f"cannot read architecture file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"architecture file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or "tensors" not in data and "extends" not in data:
        raise InputError(f"architecture file {path} has no 'tensors' mapping", "see docs/families.md")
    return data


def load_spec(path: str | Path) -> FamilySpec:
    """Read a family YAML (resolving ``extends`` against the built-in families)."""
    path = Path(path)
    data = _load_yaml(path)
    check_spec(data, path)
    if "extends" in data:
        parent = builtin_spec(data["extends"])
        base = {"family": parent.family, "detect": parent.detect, "prefixes": list(parent.prefixes),
                "config": parent.config, "fixed": parent.fixed, "tensors": parent.tensors,
                "ignore": list(parent.ignore), "inert": list(parent.inert)}
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return FamilySpec(
        family=str(data.get("family", path.stem)),
        detect=data.get("detect") or {},
        prefixes=tuple(data.get("prefixes") or ()),
        config=data.get("config") or {},
        fixed=data.get("fixed") or {},
        tensors=data.get("tensors") or {},
        source=str(path),
        ignore=tuple(data.get("ignore") or ()),
        inert=tuple(data.get("inert") or ()),
    )


SPEC_KEYS = {"family", "extends", "detect", "prefixes", "config", "fixed", "tensors", "values", "ignore", "inert"}
# config keys of every transformers config that do not change a forward pass: bookkeeping, generation,
# training (dropouts, initialisation) and task heads
COMMON_INERT = {"_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label",
                "label2id", "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states",
                "problem_type", "return_dict", "transformers_version", "bos_token_id", "eos_token_id",
                "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache", "initializer_range",
                "tokenizer_class", "attn_pdrop", "embd_pdrop", "resid_pdrop", "attention_dropout",
                "hidden_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob"}
RULE_KEYS = {"from", "tied", "slice", "rearrange", "index", "missing", "drop_rows", "rotary_pairs", "offset", "scale"}
CONFIG_KEYS = {"keys", "default", "map"}
SCALARS = (str, int, float, bool, type(None))


def check_spec(data: dict, path: Path) -> None:
    """The shape of a family spec, checked before any of it is used: each section's type, each tensor
    rule's keys and value types, each config rule's keys. Unknown keys are errors (no silent typos)."""
    def bad(where: str, want: str):
        raise InputError(f"architecture file {path}: {where} must be {want}", "see docs/families.md")

    unknown = set(data) - SPEC_KEYS
    if unknown:
        bad(f"key {sorted(unknown)[0]!r}", "one of " + ", ".join(sorted(SPEC_KEYS)))
    if not isinstance(data.get("family", ""), str) or not isinstance(data.get("extends", ""), str):
        bad("family and extends", "names")
    detect = data.get("detect") or {}
    if not isinstance(detect, dict) or not all(_names(v, single=False) for v in detect.values()):
        bad("detect", "a mapping of lists of names")
    if not _names(data.get("prefixes") or [], single=False):
        bad("prefixes", "a list of strings")
    if not _names(data.get("ignore") or [], single=False):
        bad("ignore", "a list of tensor names or patterns")
    if not _names(data.get("inert") or [], single=False):
        bad("inert", "a list of config keys")
    for section in ("config", "fixed", "tensors", "values"):
        if not isinstance(data.get(section) or {}, dict):
            bad(section, "a mapping")
    for name, value in (data.get("fixed") or {}).items():
        if not isinstance(value, SCALARS):
            bad(f"fixed.{name}", "a number, name or true/false")
    for name, rule in (data.get("config") or {}).items():
        _check_config_rule(name, rule, bad)
    for name, rule in (data.get("tensors") or {}).items():
        _check_tensor_rule(name, rule, bad)


def _names(value, single: bool = True) -> bool:
    """A name (if ``single``) or a list of names."""
    return (single and isinstance(value, str)) or isinstance(value, list) and all(isinstance(x, str) for x in value)


def _check_config_rule(name: str, rule, bad) -> None:
    if isinstance(rule, str):
        return
    if not isinstance(rule, dict) or set(rule) - CONFIG_KEYS:
        bad(f"config.{name}", "a config key or {keys, default, map}")
    if not _names(rule.get("keys", [])):
        bad(f"config.{name}.keys", "a key or a list of keys")
    if not isinstance(rule.get("default"), SCALARS) or not isinstance(rule.get("map", {}), dict):
        bad(f"config.{name}", "a scalar default and a mapping for map")


def _check_tensor_rule(name: str, rule, bad) -> None:
    if not isinstance(rule, dict) or set(rule) - RULE_KEYS:
        bad(f"tensors.{name}", "a mapping of " + ", ".join(sorted(RULE_KEYS)))
    if not _names(rule.get("from", [])):
        bad(f"tensors.{name}.from", "a tensor name or a list of names")
    for key in ("tied", "rearrange"):
        if not isinstance(rule.get(key, ""), str):
            bad(f"tensors.{name}.{key}", "a string")
    if "{e}" in rule.get("tied", "") or "{e}" in name:
        bad(f"tensors.{name}", "a rule with {e} (experts, stacked) in its from names only")
    if "index" in rule and (not isinstance(rule["index"], (int, str)) or isinstance(rule["index"], bool)):
        bad(f"tensors.{name}.index", "an integer or an expression over config values")
    if rule.get("missing", "zeros") not in ("zeros", "ones"):
        bad(f"tensors.{name}.missing", "zeros or ones")
    if "drop_rows" in rule and (isinstance(rule["drop_rows"], bool) or not isinstance(rule["drop_rows"], (int, str))
                                or isinstance(rule["drop_rows"], int) and rule["drop_rows"] < 0):
        bad(f"tensors.{name}.drop_rows", "an integer ≥ 0 or an expression over config values (RoBERTa's "
            "padding_idx + 1)")
    if rule.get("rotary_pairs", "interleaved") != "interleaved":
        bad(f"tensors.{name}.rotary_pairs", "interleaved")
    if "slice" in rule and (not isinstance(rule["slice"], list) or len(rule["slice"]) not in (2, 3) or any(
            isinstance(x, bool) or not isinstance(x, (int, str)) for x in rule["slice"])):
        bad(f"tensors.{name}.slice", "[start, stop] or [start, stop, every]: integers or expressions over config "
            "values")
    for key in ("offset", "scale"):
        if key in rule and (isinstance(rule[key], bool) or not isinstance(rule[key], (int, float, str))):
            bad(f"tensors.{name}.{key}", "a number or an expression over config values")


@lru_cache(maxsize=None)
def builtin_spec(name: str) -> FamilySpec:
    path = FAMILY_DIR / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"unknown family '{name}'", f"built-in families: {', '.join(builtin_names())}")
    return load_spec(path)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.yaml"))


def detect(config: dict, tensor_names) -> FamilySpec:
    """The built-in family whose ``detect`` rules match the config or, failing that, the tensor names.
    The family file named after the config's model_type is tried first, so that usually one file is read
    (no two built-in families claim the same model_type or architecture: tests/test_family_files.py)."""
    first = config.get("model_type")
    names = builtin_names()
    if isinstance(first, str) and first in names:
        names.remove(first)
        names.insert(0, first)
    for name in names:
        spec = builtin_spec(name)
        if spec.matches(config, tensor_names):
            return spec
    seen = sorted(tensor_names)
    shown = ", ".join(seen[:6]) + (", …" if len(seen) > 6 else "")
    what = f"model_type '{config['model_type']}'" if config.get("model_type") else f"tensors {shown}"
    raise CheckpointError(
        f"unknown model family ({what})",
        f"supported: {', '.join(builtin_names())}; describe the layout in a YAML file and pass --arch FILE.yaml",
    )


# ---------------------------------------------------------------- config expressions
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: lambda a, b: _pow(a, b)}


def _pow(a, b):
    if abs(b) > 64:  # no family needs more; a hostile spec could ask for 10 ** 10 ** 10
        raise ValueError("exponent too large")
    return a ** b


def evaluate(expr, names: dict):
    """A default: a constant, a plain word (``gelu_new``), or arithmetic over fields read so far."""
    if not isinstance(expr, str) or (expr.isidentifier() and expr not in names):
        return expr

    def ev(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise InputError(f"cannot evaluate the default '{expr}' in a family spec")

    try:
        return ev(ast.parse(expr, mode="eval").body)
    except (SyntaxError, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
        raise InputError(f"cannot evaluate the default '{expr}' in a family spec") from None


def lookup(config: dict, key: str):
    """``config[a][b]`` for the dotted key ``a.b``; ``KeyError`` if absent or null."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            raise KeyError(key)
        node = node[part]
    return node


def read_config(spec: FamilySpec, config: dict) -> dict:
    """Map a checkpoint's config dict to ModelConfig-named values with the spec's rules."""
    values: dict = {}
    for field_name, rule in spec.config.items():
        if not isinstance(rule, dict):
            rule = {"keys": [rule]}
        keys = rule.get("keys") or []
        keys = [keys] if isinstance(keys, str) else keys
        for key in keys:
            try:
                value = lookup(config, key)
                break
            except KeyError:
                continue
        else:
            if "default" not in rule:
                raise CheckpointError(
                    f"config has no '{keys[0] if keys else field_name}' ({spec.family} needs it for {field_name})"
                )
            value = evaluate(rule["default"], values)
        if "map" in rule:
            mapping = rule["map"]
            if not isinstance(value, (str, int, float, bool)) or value not in mapping:
                raise CheckpointError(f"unsupported {keys[0] if keys else field_name} '{value}' for {spec.family}",
                                      f"supported: {', '.join(map(str, mapping))}")
            value = mapping[value]
        values[field_name] = value
    values.update(spec.fixed)
    return values


# ---------------------------------------------------------------- rearrange
def _groups(side: str) -> list[list[str]]:
    out, cur = [], None
    for tok in side.replace("(", " ( ").replace(")", " ) ").split():
        if tok == "(":
            cur = []
        elif tok == ")":
            out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(tok)
        else:
            out.append([tok])
    return out


def rearrange(x: np.ndarray, pattern: str, sizes: dict[str, int]) -> np.ndarray:
    """einops-style ``rearrange`` restricted to splitting, permuting and merging axes.

    >>> rearrange(np.zeros((4, 6)), "d (three h e) -> three h d e", dict(three=3, h=1)).shape
    (3, 1, 4, 2)
    """
    lhs, rhs = (_groups(s) for s in pattern.split("->"))
    if len(lhs) != x.ndim:
        raise ValueError(f"expected {len(lhs)} axes, got shape {list(x.shape)}")
    known = dict(sizes)
    for group, dim in zip(lhs, x.shape):
        unknown = [n for n in group if n not in known]
        prod = int(np.prod([known[n] for n in group if n in known]))
        if len(unknown) > 1:
            raise ValueError(f"cannot infer the sizes of {unknown}")
        if unknown:
            if prod == 0 or dim % prod:
                raise ValueError(f"axis of {dim} does not split by {prod}")
            known[unknown[0]] = dim // prod
        elif prod != dim:
            names = "·".join(group)
            raise ValueError(f"axis ({names}) should be {prod}, is {dim} (shape {list(x.shape)})")
    flat = [n for g in lhs for n in g]
    x = x.reshape([known[n] for n in flat])  # split grouped axes
    x = x.transpose([flat.index(n) for g in rhs for n in g])
    return x.reshape([int(np.prod([known[n] for n in g])) for g in rhs])  # merge groups
