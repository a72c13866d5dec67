"""Test data for sweeps without a network: a short real training run of a tiny model, its checkpoints laid out
as a Hugging Face cache with ``stepN`` revisions (as Pythia publishes its training checkpoints).

A 2-layer attention-only transformer in tcli's own format (canonical tensor names, no LayerNorm: the
circuits are exactly what it computes), d_model 32, 4 heads of 8, context 32, the bundled samples'
byte-level BPE tokenizer (2048 tokens), trained with Adam on the first 100,000 characters of
tinyshakespeare.txt (torch, CPU, one thread, seed 0). Checkpoints at steps 0, 50, 100 and 200.

Training takes about 5-10 s on 2 busy cores, so the trained folders are kept in ``.pytest_cache/`` under
a hash of this file (written atomically: xdist workers may race); the cache layout is rebuilt per run.
``trained_run(tmp_path_factory)`` builds it once per process (several test modules share it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CORPUS = ROOT / "tests" / "data" / "tinyshakespeare_100k.txt"  # ../shared/data/tinyshakespeare.txt[:100000]
TOKENIZER = ROOT / "sample_weights" / "attn-only-2l" / "tokenizer.json"
REPO = "tiny/shakespeare-2l"
STEPS = (0, 50, 100, 200)
KEEP = ROOT / ".pytest_cache" / "tcli-sweep-run"
L, H, D, DH, CTX = 2, 4, 32, 8, 32


@dataclass
class Run:
    cache: Path  # the hub cache folder (--cache-dir)
    repo: str
    steps: tuple
    dirs: dict = field(default_factory=dict)  # step -> snapshot folder (a plain checkpoint path too)
    losses: dict = field(default_factory=dict)  # step -> training loss at that step
    other_vocab: Path | None = None  # the step-300 weights with two tokens of the tokenizer swapped
    small_vocab: Path | None = None  # a model of another vocabulary size (no tokenizer)
    vocab: int = 0

    def ids(self, steps=None):
        return [f"{self.repo}@step{s}" for s in (steps or self.steps)]


def _tokens(n_chars: int = 100_000) -> np.ndarray:
    from tokenizers import Tokenizer

    text = _corpus()[:n_chars]
    return np.asarray(Tokenizer.from_file(str(TOKENIZER)).encode(text).ids, dtype=np.int64)


def _corpus() -> str:
    """The first 100,000 characters of ../shared/data/tinyshakespeare.txt, shipped in tests/data so that every
    checkout (a bare clone without shared/ too) trains the same run."""
    return SHIPPED_CORPUS.read_text(encoding="utf-8")


def _save(path: Path, params: dict, vocab: int, tokenizer: Path | None = TOKENIZER) -> Path:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v.detach().numpy(), dtype=np.float32) for k, v in params.items()},
              str(path / "model.safetensors"))
    cfg = dict(model_type="tcli", n_layers=L, n_heads=H, d_model=D, d_head=DH, d_vocab=vocab, n_ctx=CTX, d_mlp=0,
               attn_only=True, norm="none", positional="learned", final_norm=False)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    if tokenizer is not None:
        shutil.copy(tokenizer, path / "tokenizer.json")
    return path


def _params(vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)

    def p(*shape, std):
        return (torch.randn(*shape, generator=g) * std).requires_grad_()

    params = {"embed.W_E": p(vocab, D, std=0.3), "pos_embed.W_pos": p(CTX, D, std=0.1),
              "unembed.W_U": p(D, vocab, std=D ** -0.5), "unembed.b_U": p(vocab, std=0.0)}
    for l in range(L):
        b = f"blocks.{l}.attn."
        for n in ("W_Q", "W_K", "W_V"):
            params[b + n] = p(H, D, DH, std=D ** -0.5)
        for n in ("b_Q", "b_K", "b_V"):
            params[b + n] = p(H, DH, std=0.0)
        params[b + "W_O"] = p(H, DH, D, std=DH ** -0.5)
        params[b + "b_O"] = p(D, std=0.0)
    return params


def _forward(params: dict, tokens):
    """logits [batch, pos, vocab] of the attention-only model (causal softmax(q kᵀ / sqrt(d_head)))."""
    import torch

    x = params["embed.W_E"][tokens] + params["pos_embed.W_pos"][: tokens.shape[1]]
    n = tokens.shape[1]
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    for l in range(L):
        b = f"blocks.{l}.attn."
        q = torch.einsum("bpd,hde->bhpe", x, params[b + "W_Q"]) + params[b + "b_Q"][None, :, None]
        k = torch.einsum("bpd,hde->bhpe", x, params[b + "W_K"]) + params[b + "b_K"][None, :, None]
        v = torch.einsum("bpd,hde->bhpe", x, params[b + "W_V"]) + params[b + "b_V"][None, :, None]
        scores = (q @ k.transpose(-1, -2)) / DH ** 0.5
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        z = pattern @ v  # [b, h, p, e]
        x = x + torch.einsum("bhpe,hed->bpd", z, params[b + "W_O"]) + params[b + "b_O"]
    return x @ params["unembed.W_U"] + params["unembed.b_U"]


def train(out: Path, steps=STEPS, seed: int = 0, batch: int = 16, lr: float = 3e-3):
    """Train and save a checkpoint folder per step in ``steps``: {step: folder}, {step: loss}."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, steps, seed, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, steps, seed: int, batch: int, lr: float):
    import torch

    torch.manual_seed(seed)
    data = torch.from_numpy(_tokens())
    vocab = json.loads(TOKENIZER.read_text())["model"]["vocab"].__len__()
    params = _params(vocab, seed)
    opt = torch.optim.Adam(params.values(), lr=lr)
    rng = np.random.default_rng(seed)
    dirs, losses, loss = {}, {}, float("nan")
    for step in range(max(steps) + 1):
        if step in steps:
            dirs[step] = _save(out / f"step{step}", params, vocab)
            losses[step] = loss
        if step == max(steps):
            break
        starts = torch.from_numpy(rng.integers(0, len(data) - CTX - 1, size=batch))
        window = data[starts[:, None] + torch.arange(CTX + 1)]
        logits = _forward(params, window[:, :-1])
        loss_t = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss_t.backward()
        opt.step()
        loss = float(loss_t.detach())
    return dirs, losses, params, vocab


def trained_folders(base: Path):
    """{step: folder}, {step: loss}, the final params and the vocabulary size: from ``KEEP`` when this file
    has not changed since they were trained, else trained now (into ``base``) and kept."""
    import torch

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    kept = KEEP / digest
    if not (kept / "done.json").exists():
        tmp = base / "train"
        dirs, losses, _, vocab = train(tmp)
        (tmp / "done.json").write_text(json.dumps({"losses": losses, "vocab": vocab}))
        KEEP.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(tmp, KEEP / f".{digest}.{os.getpid()}")
            os.replace(KEEP / f".{digest}.{os.getpid()}", kept)
        except OSError:  # another process got there first
            shutil.rmtree(KEEP / f".{digest}.{os.getpid()}", ignore_errors=True)
    done = json.loads((kept / "done.json").read_text())
    from safetensors.torch import load_file

    last = kept / f"step{max(STEPS)}"
    params = load_file(str(last / "model.safetensors"))
    return ({s: kept / f"step{s}" for s in STEPS}, {int(k): v for k, v in done["losses"].items()},
            {k: torch.as_tensor(v) for k, v in params.items()}, done["vocab"])


def hf_cache(root: Path, repo: str, folders: dict) -> dict:
    """Lay checkpoint folders out as huggingface_hub does: blobs, symlinked snapshot files, refs/stepN
    (and refs/main: the last); {step: snapshot folder}."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    snaps = {}
    for step, src in folders.items():
        commit = hashlib.sha1(f"{repo}@step{step}".encode()).hexdigest()
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            blob = repo_dir / "blobs" / digest
            if not blob.exists():
                shutil.copy(f, blob)
            os.symlink(os.path.relpath(blob, snap), snap / f.name)
        (repo_dir / "refs" / f"step{step}").write_text(commit)
        snaps[step] = snap
    (repo_dir / "refs" / "main").write_text((repo_dir / "refs" / f"step{max(folders)}").read_text())
    return snaps


_BUILT: dict = {}


def trained_run(tmp_path_factory) -> Run:
    """The run, built once per process."""
    if "run" not in _BUILT:
        base = tmp_path_factory.mktemp("sweep_run")
        dirs, losses, params, vocab = trained_folders(base)
        run = Run(base / "hub", REPO, STEPS, losses=losses)
        run.dirs = hf_cache(run.cache, REPO, dirs)
        # the same weights with two tokens swapped in the tokenizer: same size, different vocabulary
        other = shutil.copytree(dirs[max(STEPS)], base / "other_vocab")
        tok = json.loads((other / "tokenizer.json").read_text())
        v = tok["model"]["vocab"]
        a, b = next(t for t, i in v.items() if i == 300), next(t for t, i in v.items() if i == 301)
        v[a], v[b] = 301, 300
        (other / "tokenizer.json").write_text(json.dumps(tok))
        run.other_vocab = other
        import torch

        small = {k: (t[:, :61] if k == "unembed.W_U" else t[:61] if k in ("embed.W_E", "unembed.b_U") else t)
                 for k, t in params.items()}
        with torch.no_grad():
            run.small_vocab = _save(base / "small_vocab", small, 61, tokenizer=None)
        run.vocab = vocab
        _BUILT["run"] = run
    return _BUILT["run"]
