"""Model ids (``org/name`` or ``org/name@revision``) resolved from the local Hugging Face cache, offline.

Cache location, as huggingface_hub documents it: ``--cache-dir``, else ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
Layout: ``models--org--name/refs/<branch>`` holds a commit hash; ``snapshots/<hash>/`` holds the
files (usually symlinks into ``blobs/``). Nothing here touches the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError

MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def looks_like_model_id(text: str) -> bool:
    return bool(MODEL_ID.match(text)) and not Path(text).exists()


def resolve(model_id: str, revision: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The snapshot folder of a cached model id; a clear error (with the download command) if absent."""
    repo, _, at = model_id.partition("@")
    revision = revision or at or "main"
    root = cache_dir(cache)
    folder = root / ("models--" + repo.replace("/", "--"))
    if not folder.is_dir():
        raise CheckpointError(f"{repo} is not in the Hugging Face cache ({root}) and tcli does not download",
                              f"fetch it with: hf download {repo}"
                              + (f" --revision {revision}" if revision != "main" else ""))
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        raise CheckpointError(f"revision '{revision}' of {repo} is not in the Hugging Face cache ({root})",
                              f"fetch it with: hf download {repo} --revision {revision}")
    return snapshot
