"""Pushes of artifact folders to the Hub, the private-data marker that blocks them, and Hub ids.

A push is three calls of ``huggingface_hub``'s public API (``create_repo``, ``preupload_lfs_files``,
``create_commit``); a failure names the one that was running.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

from hf_dpkd._io import atomic_write_text

#: Name of the marker file that flags a directory as holding raw private records (never pushed).
PRIVATE_DATA_MARKER = ".hf_dpkd_private"
REPO_TYPES = ("model", "dataset")


class HubPushError(RuntimeError):
    """A push to the Hub failed; the local folder is untouched and re-running the push resumes it."""

    def __init__(self, message: str, *, repo_id: str, folder: Path, stage: str):
        super().__init__(message)
        self.repo_id, self.folder, self.stage = repo_id, folder, stage


def mark_private_data(directory: str | Path) -> Path:
    """Drop the :data:`PRIVATE_DATA_MARKER` file into `directory` so that it can never be pushed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(
        directory / PRIVATE_DATA_MARKER,
        "This directory holds raw private records. hf_dpkd refuses to push any folder containing this file.\n",
    )


def find_private_markers(folder: str | Path) -> list[Path]:
    """Every :data:`PRIVATE_DATA_MARKER` file under `folder` (hidden directories included)."""
    return sorted(
        Path(root) / PRIVATE_DATA_MARKER for root, _, files in os.walk(folder) if PRIVATE_DATA_MARKER in files
    )


def validate_repo_id(repo_id: Any) -> str:
    """Return `repo_id` if it has the Hub's 'namespace/name' form; raise a ValueError naming the fix otherwise.

    The name rules are ``huggingface_hub.utils.validate_repo_id``'s; the namespace is required here.
    """
    if not isinstance(repo_id, str):
        reason = f"a repository id is a string, not {type(repo_id).__name__}"
    else:
        try:
            _hf_validate_repo_id(repo_id)
            reason = None if "/" in repo_id else "the namespace is missing"
        except HFValidationError as e:
            reason = str(e)
    if reason is not None:
        raise ValueError(
            f"repo_id={repo_id!r} is not a valid Hub repository id: expected 'namespace/name' (your user or "
            "organization, a slash, the repository name; e.g. 'my-user/dpkd-teacher'). Names use letters, "
            "digits, '-', '_' and '.', at most 96 characters, without leading/trailing '-' or '.', '--' or "
            f"'..'. ({reason})"
        )
    return repo_id


def _additions(
    folder: Path, allow_patterns: list[str] | str | None, ignore_patterns: list[str] | str | None
) -> list[CommitOperationAdd]:
    """The files of `folder` to upload, filtered as ``HfApi.upload_folder`` filters them (``.git`` left out)."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
    kept = filter_repo_objects(
        files, allow_patterns=allow_patterns, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS
    )
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=files[name]) for name in kept]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` to it in one commit; return the repository URL.

    Refuses folders containing :data:`PRIVATE_DATA_MARKER`. Never deletes or modifies local files; a
    failure raises :class:`HubPushError` naming the repo and the step that was running (creating the
    repository, hashing the local files, uploading them, creating the commit), and re-running the same push completes
    it (files the Hub already holds are not uploaded again).
    """
    validate_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r} is not supported; use one of {', '.join(REPO_TYPES)}.")
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder={str(folder)!r} does not exist; pass the directory to push.")
    if not folder.is_dir():
        raise NotADirectoryError(f"folder={str(folder)!r} is a file; pass the directory that contains it.")
    markers = find_private_markers(folder)
    if markers:
        raise PermissionError(
            f"folder={str(folder)!r} contains raw private data (marker file {markers[0]}"
            f"{f' and {len(markers) - 1} more' if len(markers) > 1 else ''}); it will not be pushed. Push only the "
            "artifacts (model folder, synthetic dataset). If this folder really may be published, delete the "
            f"{PRIVATE_DATA_MARKER} marker file(s) first."
        )
    if not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"folder={str(folder)!r} holds no files; nothing to push.")

    api = HfApi(token=token)
    stage = "creating the repository"
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        stage = "hashing the local files"
        additions = _additions(folder, allow_patterns, ignore_patterns)
        stage = "uploading the files (preupload and LFS transfer; no commit was made)"
        api.preupload_lfs_files(repo_id, additions, repo_type=repo_type)
        stage = (
            "validating README.md and creating the commit (the files were sent, but no commit was recorded)"
        )
        api.create_commit(
            repo_id,
            additions,
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {folder.name} with hf_dpkd",
        )
    except Exception as exc:
        raise HubPushError(
            f"Pushing {folder} to the {repo_type} repo {repo_id!r} failed while {stage}: {exc}\n"
            f"Nothing was deleted or changed locally: the files in {folder} are intact. Re-run the same push to "
            "try again; files the Hub already holds are not uploaded twice.",
            repo_id=repo_id,
            folder=folder,
            stage=stage,
        ) from exc
    return str(url)


def resolve_artifact(
    reference: str, *, argument: str, repo_type: str = "model", token: str | None = None
) -> Path:
    """A local folder for `reference`: the folder itself, or a snapshot of the Hub repo it names.

    `argument` names the option in errors. Downloads go to the Hugging Face cache (`HF_HOME`), so a
    second run reuses them.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"--{argument} {reference!r} is a file; give the folder that holds it, or a Hub id.")
    try:
        validate_repo_id(reference)
    except ValueError:
        raise FileNotFoundError(
            f"--{argument} {reference!r}: no such folder, and not a Hub id ('namespace/name'). Give a folder "
            "written by the pipeline or the id of a repo it pushed."
        ) from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=reference, repo_type=repo_type, token=token))
    except Exception as e:  # the client's errors name the HTTP status; keep them, add the argument
        raise FileNotFoundError(
            f"--{argument} {reference!r}: could not download this {repo_type} repo from the Hub ({type(e).__name__}: "
            f"{e}). Check the id, your token (--hub_token or `hf auth login`) and HF_ENDPOINT."
        ) from e
