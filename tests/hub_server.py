"""A loopback Hugging Face Hub for tests: the subset of the Hub HTTP API the real clients use.

huggingface_hub (create_repo, upload_folder: preupload, LFS batch + basic transfer + verify, NDJSON commit),
transformers (``from_pretrained``: HEAD/GET ``/{repo}/resolve/{rev}/{path}``) and datasets (``load_dataset``:
repo info, tree listing, paths-info, ranged downloads) talk to it exactly as they talk to the Hub. It listens on
127.0.0.1 only, on a random port, keeps file contents content-addressed in a temporary directory and stops at
fixture teardown. ``HubServer.fail_next(kind, times)`` makes the next requests of one kind answer HTTP 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

DUMMY_TOKEN = "hf_loopbackDummyTokenForTests0000000"
USER_NAME = "hf-dpkd-tester"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
#: Like the Hub: files matching these patterns, binary files and files over 10 MB go through LFS.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".parquet",
    ".arrow",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
FAILURE_KINDS = (
    "whoami",
    "create_repo",
    "validate_yaml",
    "info",
    "tree",
    "paths_info",
    "preupload",
    "lfs_batch",
    "lfs_upload",
    "lfs_verify",
    "commit",
    "resolve",
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit: its content lives in the object store under its sha256."""

    sha256: str
    size: int
    lfs: bool

    @property
    def git_oid(self) -> str:
        """The git blob id: of the content for regular files, of the pointer file for LFS files."""
        return _git_blob_oid(_lfs_pointer(self.sha256, self.size)) if self.lfs else self.content_oid

    content_oid: str = ""


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return self.commits.get(revision)
        return None

    def last_commit_touching(self, head: Commit, path: str) -> Commit:
        """The newest commit in `head`'s history whose parent did not hold the same version of `path`."""
        commit = head
        while commit.parent is not None:
            parent = self.commits[commit.parent]
            if any(p == path or p.startswith(path + "/") for p in commit.files) and _subtree(
                parent.files, path
            ) != _subtree(commit.files, path):
                return commit
            commit = parent
        return commit


def _subtree(files: dict[str, Entry], path: str) -> dict[str, Entry]:
    return {p: e for p, e in files.items() if p == path or p.startswith(path + "/")}


@dataclass
class RequestRecord:
    method: str
    path: str
    kind: str
    status: int


class HttpError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code
        self.headers = headers or {}


class HubServer:
    """The loopback Hub: state, failure injection and the HTTP server thread."""

    def __init__(self, root: str | Path, token: str = DUMMY_TOKEN):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RequestRecord] = []
        self._failures: dict[str, list[int]] = {}
        self.request_delay = 0.0  # seconds each request waits before it is handled (to kill a push mid-way)
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer.url is only known once start() has been called.")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)  # type: ignore[union-attr]
            self._httpd = None

    # -- test knobs and inspection -------------------------------------------------------------
    def fail_next(self, kind: str, times: int = 1, status: int = 500) -> None:
        """Make the next `times` requests of `kind` (one of FAILURE_KINDS) answer HTTP `status`."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind={kind!r} is not a request kind; use one of {', '.join(FAILURE_KINDS)}.")
        if times < 1:
            raise ValueError(f"times={times!r} must be >= 1.")
        with self._lock:
            self._failures.setdefault(kind, []).extend([status] * times)

    def pending_failures(self, kind: str) -> int:
        with self._lock:
            return len(self._failures.get(kind, []))

    def _take_failure(self, kind: str) -> int | None:
        with self._lock:
            queue = self._failures.get(kind)
            return queue.pop(0) if queue else None

    def count(self, kind: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.kind == kind and (status is None or r.status == status))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a revision, read back from the object store."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        assert commit is not None, f"revision {revision!r} not found in {repo_type} {repo_id}"
        return {p: self.read_object(e.sha256) for p, e in commit.files.items()}

    def lfs_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> set[str]:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        assert commit is not None
        return {p for p, e in commit.files.items() if e.lfs}

    # -- object store --------------------------------------------------------------------------
    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.objects / sha256
        return path.is_file() and (size is None or path.stat().st_size == size)

    def read_object(self, sha256: str) -> bytes:
        return (self.objects / sha256).read_bytes()

    def write_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.objects / sha
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    # -- repository operations -----------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HttpError(409, "You already created this repo")
            repo = Repo(repo_type, repo_id, private, _now())
            self.repos[(repo_type, repo_id)] = repo
            sha = self.write_object(GITATTRIBUTES)
            entry = Entry(sha, len(GITATTRIBUTES), False, _git_blob_oid(GITATTRIBUTES))
            self._new_commit(repo, "main", "initial commit", {".gitattributes": entry})
            return repo

    def _new_commit(self, repo: Repo, branch: str, title: str, files: dict[str, Entry]) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([parent, title, time.time_ns(), sorted((p, e.sha256) for p, e in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, _now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


def _entry_for(data: bytes, lfs: bool, sha256: str) -> Entry:
    return Entry(sha256, len(data), lfs, "" if lfs else _git_blob_oid(data))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: int | None = None
    ):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _require_write(self) -> None:
        if not self._authorized():
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        self._status = 0
        split = urlsplit(self.path)
        self._query = parse_qs(split.query)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        kind = "unknown"
        # Consume the body first: on a kept-alive connection an unread body would corrupt the next request.
        self._body = self._read_body() if method in ("POST", "PUT") else b""
        if self.hub.request_delay:
            time.sleep(self.hub.request_delay)
        try:
            kind, handler, args = self._route(method, segments)
            injected = self.hub._take_failure(kind)
            if injected is not None:
                raise HttpError(injected, f"Injected failure of a {kind} request")
            handler(*args)
        except HttpError as err:
            headers = dict(err.headers)
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            headers["X-Error-Message"] = err.message
            self._json(err.status, {"error": err.message}, headers)
        except Exception as err:  # a server bug: answer 500 with the reason rather than hang the client
            self._json(500, {"error": f"loopback hub error: {type(err).__name__}: {err}"})
        finally:
            with self.hub._lock:
                self.hub.requests.append(RequestRecord(method, self.path, kind, self._status))

    def _route(self, method: str, s: list[str]):  # noqa: C901 - a flat routing table reads best
        if s[:2] == ["api", "whoami-v2"] and method == "GET":
            return "whoami", self._whoami, ()
        if s[:3] == ["api", "repos", "create"] and method == "POST":
            return "create_repo", self._create_repo, ()
        if s[:2] == ["api", "validate-yaml"] and method == "POST":
            return "validate_yaml", self._validate_yaml, ()
        if len(s) >= 4 and s[0] == "api" and s[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:]
            if not rest and method == "GET":
                return "info", self._info, (repo_type, repo_id, "main")
            if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                return "info", self._info, (repo_type, repo_id, rest[1])
            if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                return "tree", self._tree, (repo_type, repo_id, rest[1], "/".join(rest[2:]))
            if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                return "paths_info", self._paths_info, (repo_type, repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                return "preupload", self._preupload, (repo_type, repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                return "commit", self._commit, (repo_type, repo_id, rest[1])
        if len(s) == 2 and s[0] == "_lfs" and method == "PUT":
            return "lfs_upload", self._lfs_upload, (s[1],)
        if s == ["_lfs_verify"] and method == "POST":
            return "lfs_verify", self._lfs_verify, ()
        repo_type, rest = ("dataset", s[1:]) if s[:1] == ["datasets"] else ("model", s)
        if s[:1] == ["spaces"]:
            repo_type, rest = "space", s[1:]
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            if method == "POST":
                return "lfs_batch", self._lfs_batch, (repo_type, f"{rest[0]}/{rest[1][:-4]}")
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return "resolve", self._resolve, (repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        raise HttpError(404, f"The loopback Hub does not serve {method} {self.path}")

    # -- lookups -------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _file_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        entry = commit.files[path]
        item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            pointer = _lfs_pointer(entry.sha256, entry.size)
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
        if expand:
            item["lastCommit"] = self._last_commit_json(repo, commit, path)
        return item

    def _dir_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        subtree = sorted((p, e.git_oid) for p, e in _subtree(commit.files, path).items())
        item: dict[str, Any] = {
            "type": "directory",
            "oid": hashlib.sha1(json.dumps(subtree).encode()).hexdigest(),
            "path": path,
        }
        if expand:
            item["lastCommit"] = self._last_commit_json(repo, commit, path)
        return item

    def _last_commit_json(self, repo: Repo, commit: Commit, path: str) -> dict[str, str]:
        last = repo.last_commit_touching(commit, path)
        return {"id": last.oid, "title": last.title, "date": last.date}

    @staticmethod
    def _directories(files: dict[str, Entry]) -> set[str]:
        dirs = set()
        for p in files:
            parts = p.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    # -- endpoints -----------------------------------------------------------------------------
    def _whoami(self) -> None:
        if not self._authorized():
            raise HttpError(401, "Invalid credentials in Authorization header")
        self._json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER_NAME,
                "fullname": "hf_dpkd tester",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            },
        )

    def _create_repo(self) -> None:
        self._require_write()
        payload = json.loads(self._body or b"{}")
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name"), payload.get("organization") or USER_NAME
        if repo_type not in URL_PREFIX or not isinstance(name, str) or not name:
            raise HttpError(400, f"Bad create-repo payload: {payload}")
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo_id = f"{org}/{name}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        try:
            self.hub.create_repo(repo_type, repo_id, private)
        except HttpError as err:  # the Hub answers 409 with the existing repo's url (create_repo reads it)
            self._json(err.status, {"error": err.message, "url": url})
            return
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._body or b"{}")
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match is None:
            self._json(200, {"errors": [], "warnings": [{"message": "Empty or missing yaml metadata"}]})
            return
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {err}"}]})
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
                if entry.lfs:
                    pointer = _lfs_pointer(entry.sha256, entry.size)
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
                siblings.append(sibling)
            card_data = None
            if "README.md" in commit.files:
                text = self.hub.read_object(commit.files["README.md"].sha256).decode("utf-8", "replace")
                match = re.match(r"^---\s*\n(.*?)\n---", text, re.DOTALL)
                card_data = yaml.safe_load(match.group(1)) if match else None
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list((card_data or {}).get("tags") or []),
                "cardData": card_data,
                "siblings": siblings,
            },
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self._query.get("expand", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            dirs = self._directories(commit.files)
            if path and path not in dirs:
                raise HttpError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            prefix = f"{path}/" if path else ""
            items = []
            for d in sorted(dirs):
                if d.startswith(prefix) and (recursive or "/" not in d[len(prefix) :]):
                    items.append(self._dir_json(repo, commit, d, expand))
            for p in sorted(commit.files):
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :]):
                    items.append(self._file_json(repo, commit, p, expand))
        self._json(200, items)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            form = json.loads(self._body or b"{}")
            paths, expand = list(form.get("paths", [])), bool(form.get("expand"))
        else:
            form = parse_qs(self._body.decode())
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            dirs = self._directories(commit.files)
            items = []
            for p in paths:
                p = p.strip("/")
                if p in commit.files:
                    items.append(self._file_json(repo, commit, p, expand))
                elif p in dirs:
                    items.append(self._dir_json(repo, commit, p, expand))
        self._json(200, items)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        payload = json.loads(self._body or b"{}")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            files = []
            for f in payload.get("files", []):
                path, size = f["path"], int(f["size"])
                sample = base64.b64decode(f.get("sample", ""))
                lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample
                existing = commit.files.get(path)
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else existing.git_oid
                files.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
        self._json(200, {"files": files})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_write()
        payload = json.loads(self._body or b"{}")
        self._repo(repo_type, repo_id)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HttpError(400, "The loopback Hub only supports the basic LFS upload transfer")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size}
            if not self.hub.has_object(oid, size):
                item["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_lfs/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/_lfs_verify", "header": {}},
                }
            objects.append(item)
        self._json(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def _lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self._body).hexdigest() != oid:
            raise HttpError(400, f"Uploaded content does not hash to {oid}")
        self.hub.write_object(self._body)
        self._send(200)

    def _lfs_verify(self) -> None:
        payload = json.loads(self._body or b"{}")
        if not self.hub.has_object(payload.get("oid", ""), payload.get("size")):
            raise HttpError(
                404, f"LFS object {payload.get('oid')} of size {payload.get('size')} was not uploaded"
            )
        self._json(200, {"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "A commit payload starts with a header line")
        header = lines[0]["value"]
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            if revision not in repo.branches:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HttpError(412, f"parentCommit {parent} is not the head of {revision}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HttpError(400, f"Unsupported encoding {value.get('encoding')}")
                    data = base64.b64decode(value["content"])
                    files[path] = _entry_for(data, False, self.hub.write_object(data))
                elif key == "lfsFile":
                    oid, size = value["oid"], value.get("size")
                    if not self.hub.has_object(oid, size):
                        raise HttpError(422, f"LFS object {oid} for {path} was never uploaded")
                    files[path] = Entry(oid, (self.hub.objects / oid).stat().st_size, True, "")
                elif key == "deletedFile":
                    if path not in files:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    files = {p: e for p, e in files.items() if not p.startswith(path.rstrip("/") + "/")}
                else:
                    raise HttpError(400, f"Unsupported commit operation {key!r}")
            commit = self.hub._new_commit(repo, revision, header.get("summary", ""), files)
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        self._json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            entry = commit.files.get(path)
        if entry is None:
            raise HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.git_oid}"',
            "Accept-Ranges": "bytes",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if ranged and (ranged.group(1) or ranged.group(2)):
            if ranged.group(1):
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)), entry.size - 1) if ranged.group(2) else entry.size - 1
            else:
                start = max(entry.size - int(ranged.group(2)), 0)
            if start >= entry.size or start > end:
                raise HttpError(
                    416, "Range not satisfiable", headers={"Content-Range": f"bytes */{entry.size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        if self.command == "HEAD":
            self._send(status, b"", headers, length=end - start + 1)
            return
        with open(self.hub.objects / entry.sha256, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self._send(status, body, headers)


@pytest.fixture(name="hub")
def hub_fixture(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    """A running loopback Hub; huggingface_hub in this process and in child processes points at it.

    Environment for child processes: HF_ENDPOINT, HF_HUB_DISABLE_XET=1 (plain LFS), online mode, a dummy
    HF_TOKEN and a private HF_HOME / HF_HUB_CACHE. This process: the same values patched into
    ``huggingface_hub.constants``, which reads the environment once at import time.
    """
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("loopback_hub")
    server = HubServer(root / "store").start()
    home = root / "hf_home"
    env = client_env(server, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    try:
        yield server
    finally:
        server.stop()


def client_env(server: HubServer, home: Path) -> dict[str, str]:
    """Environment that points the real Hub clients at `server`, with a private cache under `home`."""
    return {
        "HF_ENDPOINT": server.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_TOKEN": server.token,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
