"""Model ids (``name``, ``org/name``, either with ``@revision``) resolved from the local Hugging Face cache, offline.

Cache location: ``--cache-dir``, else ``huggingface_hub.constants.HF_HUB_CACHE`` as the library computes it
(``$HF_HUB_CACHE``, else the legacy ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``; ``~`` and ``$VAR`` expanded).
The library reads the environment once, when ``huggingface_hub.constants`` is first imported; tcli runs that
module's code afresh in a throwaway namespace at each call (the imported module stays untouched), so the
formula is the installed library's own and an environment changed after import (tests) is honoured.

Layout: ``models--org--name/refs/<branch or tag>`` holds a commit hash; ``snapshots/<hash>/`` holds the files.
The lookup is tcli's own, strict, after the library's repo-id rules (``validate_repo_id``) and folder name
(``repo_folder_name``): the library's lookups join a revision onto ``refs/`` unchecked (``try_to_load_from_cache``),
and ``snapshot_download(local_files_only=True)`` also joins a ref file's content onto ``snapshots/``.
Here a revision is a 40-hex commit hash or a ref name (no ``..``, no leading ``/``, no backslash); a ref file
must lie inside the repository's ``refs/`` and hold a 40-hex hash; the snapshot's real path must lie inside the
repository's ``snapshots/``. Nothing here opens a socket: only local functions of huggingface_hub are called.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import warnings
from pathlib import Path

from ..errors import CheckpointError, InputError

COMMIT = re.compile(r"[0-9a-f]{40}")  # huggingface_hub.file_download.REGEX_COMMIT_HASH
# quick filter before huggingface_hub is imported: [org/]name[@revision]; validate_repo_id decides
ID_SHAPE = re.compile(r"^[\w.-]+(/[\w.-]+)?(@.*)?$", re.DOTALL)
# names that are files, not repositories: a missing local file stays "no such file"
FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".yaml", ".yml", ".npz",
                 ".h5", ".msgpack", ".onnx")
REF_BYTES = 256  # a ref file holds 40 characters; never read more than this


def _hf():
    """huggingface_hub's ``file_download`` and ``utils``, imported lazily (it is tokenizers' dependency)."""
    try:
        from huggingface_hub import file_download, utils
    except Exception as exc:  # not installed, or an HF_* variable it cannot parse at import
        raise CheckpointError(f"huggingface_hub cannot be imported ({type(exc).__name__}: {exc})",
                              "model ids need it; reinstall tokenizers or fix the HF_* variables") from None
    return file_download, utils


def _library_cache_dir() -> str:
    """``huggingface_hub.constants.HF_HUB_CACHE`` computed from the environment now, by the library's code."""
    spec = importlib.util.find_spec("huggingface_hub.constants")
    if spec is None or spec.loader is None:
        raise CheckpointError("huggingface_hub is not installed", "model ids need it; reinstall tokenizers")
    module = importlib.util.module_from_spec(spec)
    try:
        with warnings.catch_warnings():  # its warnings (e.g. HF_HUB_ENABLE_HF_TRANSFER) were shown at import
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    except Exception as exc:
        raise CheckpointError(f"huggingface_hub cannot read its settings ({type(exc).__name__}: {exc})",
                              "fix the HF_* environment variables") from None
    if hasattr(module, "HF_HUB_CACHE"):
        return module.HF_HUB_CACHE
    return module.HUGGINGFACE_HUB_CACHE  # huggingface_hub < 0.20 had only the legacy name


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The hub cache: ``explicit`` (``~`` expanded), else the library's ``HF_HUB_CACHE`` for today's environment."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(_library_cache_dir())


def _valid_repo_id(repo: str) -> bool:
    _, utils = _hf()
    try:
        utils.validate_repo_id(repo)
    except utils.HFValidationError:
        return False
    return True


def looks_like_model_id(text: str) -> bool:
    """``name`` or ``org/name``, optionally ``@revision``, valid as a Hub repo id, and no such local path."""
    if not ID_SHAPE.match(text) or Path(text).exists():
        return False
    repo = text.partition("@")[0]
    return not repo.lower().endswith(FILE_SUFFIXES) and _valid_repo_id(repo)


def check_revision(revision: str) -> None:
    """A 40-hex commit hash or a branch/tag name that stays inside ``refs/``; else InputError."""
    if COMMIT.fullmatch(revision):
        return
    problem = None
    if not revision:
        problem = "it is empty"
    elif revision.startswith("/"):
        problem = "it starts with '/'"
    elif "\\" in revision:
        problem = "it holds a backslash"
    elif ".." in revision:
        problem = "it holds '..'"
    elif any(part in ("", ".") for part in revision.split("/")):
        problem = "it has an empty or '.' component"
    elif any(ord(c) < 32 or ord(c) == 127 for c in revision):
        problem = "it holds a control character"
    if problem:
        raise InputError(f"revision {revision!r} is neither a commit hash (40 hex) nor a branch or tag name: {problem}")


def _inside(path: Path, base: Path) -> bool:
    """Whether ``path``'s real path (links followed) lies inside ``base`` (already a real path, not followed)."""
    return Path(os.path.realpath(path)).is_relative_to(base)


def _fetch(repo: str, revision: str | None = None) -> str:
    """The command that would put ``repo`` (at ``revision``) into the cache."""
    return f"hf download {repo}" + (f" --revision {shlex.quote(revision)}" if revision else "")


def _read_ref(folder: Path, revision: str, repo: str, root: Path) -> str:
    """The commit hash in ``folder/refs/<revision>``; the file must lie inside ``refs/`` and hold 40 hex."""
    ref = folder / "refs" / revision
    if not ref.is_file():
        raise CheckpointError(f"revision '{revision}' of {repo} is not in the Hugging Face cache ({root})",
                              "fetch it with: " + _fetch(repo, revision))
    if not _inside(ref, Path(os.path.realpath(folder)) / "refs"):
        raise CheckpointError(f"{ref} points outside {folder.name}/refs ({os.path.realpath(ref)})",
                              "the cache is damaged; fetch again with: " + _fetch(repo, revision))
    with open(ref, "rb") as fh:
        content = fh.read(REF_BYTES).decode("utf-8", errors="replace")
    commit = content.strip()
    if not COMMIT.fullmatch(commit):
        raise CheckpointError(f"{ref} holds {commit[:60]!r}, not a 40-hex commit hash",
                              "the cache is damaged; fetch again with: " + _fetch(repo, revision))
    return commit


def resolve(model_id: str, revision: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The snapshot folder of a cached model id ``[org/]name[@rev]``; ``revision`` (``--revision``) must agree
    with ``@rev`` when both are given; a clear error (with the download command) if not cached."""
    repo, at, pinned = model_id.partition("@")
    if at and revision is not None and revision != pinned:
        raise InputError(f"{model_id!r} pins revision {pinned!r} but --revision is {revision!r}",
                         "give the revision once")
    revision = revision if revision is not None else pinned if at else "main"
    check_revision(revision)
    if not _valid_repo_id(repo):
        raise InputError(f"'{repo}' is not a Hugging Face repo id",
                         "name or org/name: letters, digits, '-', '_', '.'; no '--' or '..'")
    file_download, _ = _hf()
    root = cache_dir(cache)
    folder = root / file_download.repo_folder_name(repo_id=repo, repo_type="model")
    fetch = _fetch(repo, revision if revision != "main" else None)
    if not folder.is_dir():
        raise CheckpointError(f"{repo}: no such file or folder here ({Path(repo).absolute()}), and no model "
                              f"{repo} in the Hugging Face cache ({folder}); tcli does not download",
                              f"check the path, or fetch the model with: {fetch}")
    commit = revision if COMMIT.fullmatch(revision) else _read_ref(folder, revision, repo, root)
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        raise CheckpointError(f"revision '{revision}' of {repo} is not in the Hugging Face cache ({root})",
                              "fetch it with: " + _fetch(repo, revision))
    if not _inside(snapshot, Path(os.path.realpath(folder)) / "snapshots"):
        raise CheckpointError(f"{snapshot} points outside {folder.name}/snapshots ({os.path.realpath(snapshot)})",
                              f"the cache is damaged; fetch again with: {fetch}")
    return snapshot


STEP_REVISION = re.compile(r"step(\d+)")  # Pythia-style training-step branches: step0, step1000, …


def parse_revisions(text: str) -> list[str]:
    """``--revision step1000,step2000,…``: the revisions of a sweep, in order (each checked by ``check_revision``)."""
    revisions = [r.strip() for r in text.split(",")]
    if revisions and revisions[-1] == "" and len(revisions) > 1:  # a trailing comma: a list of one
        revisions.pop()
    for r in revisions:
        if not r:
            raise InputError(f"--revision {text!r}: an empty revision in the list", "write rev1,rev2,…")
        check_revision(r)
    return revisions


def step_of(revision: str | None) -> int | None:
    """N for a revision named ``stepN`` (a training step), else None."""
    m = STEP_REVISION.fullmatch(revision or "")
    return int(m.group(1)) if m else None
