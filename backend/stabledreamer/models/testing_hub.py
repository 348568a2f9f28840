"""A local stand-in for the Hugging Face hub on loopback, for tests and benches (offline).

It serves folders (tiny models made by ``stabledreamer tiny-models``) as hub repositories through
the endpoints the pinned huggingface_hub client (2.4) calls, read from its source:

- ``GET /api/models/{repo}/revision/{rev}`` (``HfApi.model_info``; ``?blobs=true`` adds sizes):
  ``id``, ``sha`` (the commit) and ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}?recursive=...`` (``list_repo_tree``, which
  ``snapshot_download`` calls): one page of ``{"type": "file", "path", "size", "oid", "lfs"}``;
- ``HEAD /{repo}/resolve/{rev}/{file}`` (``get_hf_file_metadata``): ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``;
- ``GET /api/models/{repo}/auth-check`` (``HfApi.auth_check``, ``models verify --online``);
- ``GET /{repo}/resolve/{rev}/{file}`` with ``Range: bytes=N-`` answered ``206`` (``http_get``
  resumes an interrupted transfer that way).

Errors carry the hub's ``X-Error-Code`` header, from which the client picks its exception:
``GatedRepo`` (a gated repository's files and auth-check: 401 without a token, 403 with a token
that was not granted access; its metadata and file list stay public, as on the hub),
``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``. Behaviours for tests: a repository
can be gated (``gated={repo: {allowed tokens}}``), a file can be cut off mid-transfer once
(``drop_once``: the connection closes after half the bytes), and transfers can be slowed
(``slow_s_per_chunk``, sent in ``chunk_bytes`` pieces). ``requests`` records what was asked
(method, path, ``Range``, whether a token came): tests assert on it.

Point huggingface_hub at it with ``HF_ENDPOINT=hub.url`` (``models.hub`` reads it at call time).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    token: bool


LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".ckpt")
"""Files stored with Git LFS, as the hub's repositories' ``.gitattributes`` say (weights,
sentencepiece models); the rest are plain git blobs."""


@dataclass
class _Repo:
    files: dict[str, bytes]
    commit: str
    etags: dict[str, str] = field(default_factory=dict)
    """LFS files: their SHA-256 (the hub's ETag for them); git blobs: the blob's SHA-1."""
    lfs: set[str] = field(default_factory=set)


def _commit_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
    return h.hexdigest()


class LocalHub:
    """``with LocalHub({"owner/name": folder}) as hub:`` serves on ``hub.url`` until exit."""

    def __init__(
        self,
        repos: dict[str, str | Path],
        *,
        gated: dict[str, set[str]] | None = None,
        drop_once: set[str] | None = None,
        slow_s_per_chunk: float = 0.0,
        chunk_bytes: int = 64 * 1024,
        revision: str = "main",
    ) -> None:
        self.repos: dict[str, _Repo] = {}
        for repo_id, folder in repos.items():
            root = Path(folder)
            files = {p.relative_to(root).as_posix(): p.read_bytes()
                     for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip
            r = _Repo(files, _commit_of(files))
            r.lfs = {n for n in files if n.endswith(LFS_SUFFIXES)}
            r.etags = {
                n: hashlib.sha256(b).hexdigest()
                if n in r.lfs
                else hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()
                for n, b in files.items()
            }
            self.repos[repo_id] = r
        self.gated = gated or {}
        self.drop_once = set(drop_once or ())
        self.slow_s_per_chunk = slow_s_per_chunk
        self.chunk_bytes = chunk_bytes
        self.revision = revision
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Its address (still the same after ``stop()``: then a closed port, for tests)."""
        assert hasattr(self, "_url"), "start() the hub first"
        return self._url

    def seen(self, method: str | None = None, contains: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and contains in r.path]  # fmt: skip

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].commit


class _Handler(BaseHTTPRequestHandler):
    owner: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers ----------------------------------------------------------------------------------
    def _record(self) -> None:
        auth = self.headers.get("Authorization", "")
        with self.owner._lock:
            self.owner.requests.append(
                Seen(self.command, unquote(urlsplit(self.path).path), self.headers.get("Range"),
                     auth.startswith("Bearer "))
            )  # fmt: skip

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self, repo_id: str, revision: str, files: bool = True) -> _Repo | None:
        """The repository when this request may see it, else an error was sent (None). As on
        the hub, a gated repository's metadata and file list are public (``files=False``); its
        files and ``auth-check`` need a token that was granted access."""
        hub = self.owner
        repo = hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if files and repo_id in hub.gated:
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if not token:
                why = f"Access to model {repo_id} is restricted: you must be authenticated."
                self._error(401, "GatedRepo", why)
                return None
            if token not in hub.gated[repo_id]:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you "
                            "are not in the authorized list.")  # fmt: skip
                return None
        if revision not in (hub.revision, repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    # -- routes -----------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        self._record()
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
            repo = self._repo(repo_id, revision, files=False)
            if repo is not None:
                self._api(repo_id, repo, kind)
            return
        if parts[:2] == ["api", "models"] and len(parts) == 5 and parts[4] == "auth-check":
            if self._repo("/".join(parts[2:4]), self.owner.revision) is not None:
                self._json({})  # ``HfApi.auth_check``: 200 when this token may read the repo
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._repo(repo_id, revision)
            if repo is not None:
                self._file(repo, name)
            return
        self._error(404, "NotFound", f"no route for {self.path}")

    def _api(self, repo_id: str, repo: _Repo, kind: str) -> None:
        if kind == "revision":
            blobs = "blobs=true" in (urlsplit(self.path).query or "").lower()
            siblings = [
                {
                    "rfilename": n,
                    **(
                        {"size": len(b), "blobId": repo.etags[n][:40], **self._lfs(repo, n)}
                        if blobs
                        else {}
                    ),
                }
                for n, b in repo.files.items()
            ]
            self._json({"id": repo_id, "sha": repo.commit, "private": False,
                        "gated": "auto" if repo_id in self.owner.gated else False,
                        "siblings": siblings})  # fmt: skip
            return
        self._json([
            {"type": "file", "path": n, "size": len(b), "oid": repo.etags[n][:40],
             **({"lfs": {"oid": repo.etags[n], "size": len(b), "pointerSize": 134}}
                if n in repo.lfs else {})}
            for n, b in repo.files.items()
        ])  # fmt: skip

    @staticmethod
    def _lfs(repo: _Repo, name: str) -> dict:
        if name not in repo.lfs:
            return {}
        size = len(repo.files[name])
        return {"lfs": {"size": size, "sha256": repo.etags[name], "pointerSize": 134}}

    def _file(self, repo: _Repo, name: str) -> None:
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", f"{name} does not exist")
            return
        etag = repo.etags[name]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
            start = int(rng[6:].split("-")[0] or 0)
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{etag}"')
        if name in repo.lfs:  # the hub names an LFS file's content by its SHA-256
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        hub = self.owner
        drop = False
        with hub._lock:
            if name in hub.drop_once and start == 0:
                hub.drop_once.discard(name)
                drop = True
        limit = len(body) // 2 if drop else len(body)
        sent = 0
        try:
            while sent < limit:
                piece = body[sent : min(sent + hub.chunk_bytes, limit)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if hub.slow_s_per_chunk:
                    time.sleep(hub.slow_s_per_chunk)
        except (BrokenPipeError, ConnectionResetError):
            return
        if drop:  # the rest never comes: the client sees a short body and a closed connection
            self.close_connection = True
