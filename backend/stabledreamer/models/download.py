"""Download a model set with huggingface_hub, with progress, cancel and clear errors.

Each repository of the set is fetched with ``snapshot_download(allow_patterns=...)``, the path
diffusers' own ``from_pretrained`` takes: files land in the Hugging Face cache, the revision's
ref and the commit's file listing are written, and a later offline run finds them.

What the pinned huggingface_hub (2.4) does, read from its source (``file_download.http_get``,
``_download_to_tmp_and_move``), and what this module adds:

- **Resume.** In 2.4 a transfer cut mid-file is resumed within the same download with a
  ``Range: bytes=N-`` request (up to 5 times), but a file interrupted by a *stopped* download
  (cancel, a killed process) starts again: each file goes to a per-process ``*.incomplete``
  name that is deleted when its transfer fails. So the large (LFS) files, the weights, are
  fetched here first, with huggingface_hub's own ``http_get``, into ``blobs/<sha256>.partial``
  in the cache, which survives a stop: the next download resumes it with a ``Range`` request,
  checks the SHA-256 against the hub's listing and renames it to ``blobs/<sha256>``, the name
  huggingface_hub gives that blob. ``snapshot_download`` then registers it (snapshot link, ref,
  listing) without a transfer and fetches the small files. A ``.partial`` is never a blob and
  nothing links to it: a stop leaves nothing half-registered. Files already complete are never
  fetched again.
- **Cancel** (``cancel``, a ``threading.Event``): the progress hook raises ``DownloadCancelled``
  inside the transfer; a large file keeps its ``.partial`` (resumed next time), a small one's
  temporary is deleted by huggingface_hub; completed files stay. Checked every ``chunk_bytes``
  (huggingface_hub reads 10 MiB per chunk by default; this module lowers its
  ``constants.DOWNLOAD_CHUNK_SIZE``, process-wide, to ``chunk_bytes``, 1 MiB by default, so
  progress and cancel answer within a MiB).
- **Progress** (``progress``, a callback): bytes done and total (the total from the hub's file
  listing, known before the first byte), rate, ETA, files; at most every ``min_interval_s``.
- **Plain HTTP, not Xet.** The hub stores large files in Xet storage, which the pinned client
  fetches through ``hf_xet`` when installed (it is: a dependency of huggingface_hub); its
  transfers run in hf_xet's own threads and report progress from there, where raising from the
  progress hook is not known to stop them, and the local test hub serves no Xet. So downloads
  here set huggingface_hub's ``constants.HF_HUB_DISABLE_XET`` (process-wide; ``xet=True`` keeps
  Xet): the hub then serves the same files over plain HTTP, with the cancel and resume above.
- **Free disk** is checked before the first byte: ``DiskFullError`` (code ``disk_full``) with the
  bytes needed and free. (huggingface_hub itself only warns.)
- **Errors** are one line each: no network (``NoNetworkError``), a gated repository without an
  accepted licence (``GatedModelError``, with the page where it is accepted), an unknown
  repository or revision (``UnknownModelError``).

No torch here. The endpoint and cache are read at call time (``hub``), never from
huggingface_hub's import-time constants.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import DiskFullError
from . import hub
from .errors import (
    DownloadCancelled,
    GatedModelError,
    ModelError,
    NoNetworkError,
    UnknownModelError,
)
from .sets import ModelRef, ModelSet, get_set
from .store import SetStatus, human_bytes, matches, set_status, snapshot_of

MIB = 2**20
DISK_MARGIN_BYTES = 256 * MIB
"""Room kept free beyond the download (other writers, the cache's own files)."""


@dataclass
class DownloadProgress:
    set_id: str
    repo_id: str
    """The repository being fetched now."""
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    rate_bps: float
    """Bytes per second over the last few seconds (0 until measured)."""
    eta_s: float | None
    elapsed_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


@dataclass
class PlannedFile:
    repo_id: str
    path: str
    size: int
    cached: bool
    sha256: str | None = None
    """The hub's LFS hash (large files), checked before the file enters the cache."""
    partial: int = 0
    """Bytes already in this file's ``.partial`` from an earlier, stopped download."""


@dataclass
class DownloadPlan:
    set_id: str
    commits: dict[str, str]
    """repo -> the commit its revision resolves to now."""
    files: list[PlannedFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def to_fetch_bytes(self) -> int:
        return sum(f.size - f.partial for f in self.files if not f.cached)

    @property
    def done_bytes(self) -> int:
        return sum(f.size if f.cached else f.partial for f in self.files)


def free_space(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing parent). Tests
    replace this probe to simulate a full disk."""
    import shutil

    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def patterns_of(refs: tuple[ModelRef, ...]) -> list[str]:
    out: list[str] = []
    for r in refs:
        out += [p for p in r.allow_patterns if p not in out]
    return out


# -- errors: huggingface_hub's exceptions as one line each -----------------------------------------


def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def explain(e: BaseException, repo_id: str, revision: str, endpoint: str) -> ModelError:
    """A huggingface_hub failure as the error that says what to do."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    errs = list(_chain(e))
    page = hub.page(repo_id, endpoint)
    if any(isinstance(x, DownloadCancelled) for x in errs):
        return next(x for x in errs if isinstance(x, DownloadCancelled))
    if any(isinstance(x, GatedRepoError) for x in errs):
        return GatedModelError(
            f"{repo_id} is gated and this token has no access (or no token was given): open "
            f"{page}, log in, accept its licence, then give that account's token "
            "(`stabledreamer models token set`) and download again",
            repo_id=repo_id, page=page,
        )  # fmt: skip
    if any(isinstance(x, RevisionNotFoundError) for x in errs):
        return UnknownModelError(
            f"{repo_id} has no revision {revision!r} on {endpoint} (moved or deleted?): "
            "`stabledreamer models verify --online` checks every set's ids"
        )
    if any(isinstance(x, RepositoryNotFoundError) for x in errs):
        return UnknownModelError(
            f"{repo_id}: no such repository on {endpoint} (withdrawn or renamed? a private "
            "repository also needs a token): `stabledreamer models verify --online` checks "
            "every set's ids"
        )
    if any(isinstance(x, OfflineModeIsEnabled) for x in errs):
        return NoNetworkError("HF_HUB_OFFLINE is set: unset it to download (models download)")
    net = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, ConnectionError)
    if any(isinstance(x, net) for x in errs) or any(
        isinstance(x, LocalEntryNotFoundError) for x in errs
    ):
        why = next((x for x in errs if isinstance(x, net)), errs[-1])
        return NoNetworkError(
            f"cannot reach the model hub at {endpoint} ({type(why).__name__}: "
            f"{str(why).splitlines()[0][:160] if str(why) else 'no answer'}): check the network "
            "or proxy (HTTPS_PROXY), then download again; completed files are kept"
        )
    http = next((x for x in errs if isinstance(x, HfHubHTTPError)), None)
    if http is not None:
        status = getattr(getattr(http, "response", None), "status_code", "?")
        return ModelError(f"{repo_id}: the hub answered HTTP {status}: {str(http).splitlines()[0]}")
    if isinstance(e, OSError):
        return ModelError(f"{repo_id}: download failed: {e}")
    raise e


# -- progress ------------------------------------------------------------------------------------


class _Tracker:
    """Sums the bytes of every file huggingface_hub reports, from any of its threads."""

    def __init__(self, plan: DownloadPlan, progress, cancel, min_interval_s: float) -> None:
        self.plan, self.progress, self.cancel = plan, progress, cancel
        self.min_interval_s = min_interval_s
        self.lock = threading.Lock()
        self.base = plan.done_bytes  # already in the cache, or in a resumable .partial
        self.done: dict[str, int] = {}  # repo -> its files complete in the cache
        for f in plan.files:
            self.done[f.repo_id] = self.done.get(f.repo_id, 0) + int(f.cached)
        self.phase_start = 0  # the repo's complete files when its snapshot_download began
        self.written = 0
        self.repo_id = ""
        self.start = time.monotonic()
        self.last_emit = 0.0
        self.window: list[tuple[float, int]] = []

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                f"download of model set {self.plan.set_id!r} cancelled; completed files are kept, "
                "the rest is fetched by the next download"
            )

    def add(self, n: float) -> None:
        self.check()
        with self.lock:
            self.written += int(n)
        self.emit()

    def file_done(self, repo_id: str) -> None:
        """A large file fetched into the blob store ahead of its repository's snapshot."""
        with self.lock:
            self.done[repo_id] = self.done.get(repo_id, 0) + 1
        self.emit()

    def begin_repo(self, repo_id: str) -> None:
        with self.lock:
            self.repo_id, self.phase_start = repo_id, self.done.get(repo_id, 0)

    def set_files(self, n: int) -> None:
        """snapshot_download's file count for the repository (its complete files included)."""
        self.check()
        with self.lock:
            self.done[self.repo_id] = max(self.phase_start, n)
        self.emit()

    def repo_done(self, repo_id: str) -> None:
        with self.lock:
            self.done[repo_id] = sum(f.repo_id == repo_id for f in self.plan.files)

    def snapshot(self) -> DownloadProgress:
        now = time.monotonic()
        with self.lock:
            done = min(self.base + self.written, self.plan.total_bytes)
            self.window.append((now, done))
            while len(self.window) > 2 and now - self.window[0][0] > 5.0:
                self.window.pop(0)
            (t0, d0), (t1, d1) = self.window[0], self.window[-1]
            files_done = sum(self.done.values())
        rate = (d1 - d0) / (t1 - t0) if t1 - t0 > 0.05 else 0.0
        left = self.plan.total_bytes - done
        return DownloadProgress(
            set_id=self.plan.set_id, repo_id=self.repo_id, bytes_done=done,
            bytes_total=self.plan.total_bytes, files_done=min(files_done, len(self.plan.files)),
            files_total=len(self.plan.files), rate_bps=rate,
            eta_s=(left / rate if rate > 0 else (0.0 if left == 0 else None)),
            elapsed_s=now - self.start,
        )  # fmt: skip

    def emit(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_emit < self.min_interval_s:
            return
        self.last_emit = now
        self.progress(self.snapshot())

    def file_bar_class(self):
        """The bar ``http_get`` reports one file's bytes to (``initial``: the resumed bytes,
        already counted in ``base``)."""
        tracker = self

        class FileBar:
            def __init__(self, *args, **kwargs) -> None:
                self.n = kwargs.get("initial") or 0
                self.total = kwargs.get("total")

            def update(self, n: float | None = 1) -> None:
                self.n += n or 0
                tracker.add(n or 0)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

            def close(self) -> None:
                pass

        return FileBar

    def bar_class(self):
        """A tqdm look-alike for ``snapshot_download(tqdm_class=...)``: it is called for the
        "Fetching N files" bar (one ``update`` per finished file), the bytes-written bar (fed by
        every file's chunks) and the network-transfer bar (ignored: the same bytes over HTTP)."""
        tracker = self

        class Bar:
            def __init__(self, *args, **kwargs) -> None:
                self.desc = str(kwargs.get("desc") or "")
                self.total = kwargs.get("total")
                self.n = kwargs.get("initial") or 0
                self.kind = "other"
                if self.desc.startswith("Fetching"):
                    self.kind = "files"
                elif self.desc.startswith("Reconstructing"):
                    self.kind = "bytes"
                self.format_dict = {"rate": None}

            def update(self, n: float | None = 1) -> None:
                n = n or 0
                self.n += n
                if self.kind == "bytes":
                    tracker.add(n)
                elif self.kind == "files":
                    tracker.set_files(int(self.n))
                else:
                    tracker.check()

            def refresh(self, *a, **k) -> None:
                pass

            def close(self) -> None:
                pass

            def set_description(self, *a, **k) -> None:
                pass

            set_description_str = set_postfix_str = set_postfix = set_description

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

        return Bar


# -- large files: resumable across downloads -------------------------------------------------------

PARTIAL = ".partial"


def _partials(cache: Path, repo_id: str) -> dict[str, int]:
    """sha256 -> bytes of the ``blobs/<sha256>.partial`` files a stopped download left."""
    from .store import repo_folder

    out = {}
    for p in (repo_folder(cache, repo_id) / "blobs").glob("*" + PARTIAL):
        out[p.name[: -len(PARTIAL)]] = p.stat().st_size
    return out


def _fetch_resumable(
    f: PlannedFile, commit: str, cache: Path, endpoint: str, token: str | None, tracker
) -> None:
    """Fetch one large (LFS) file into the cache's blob store, resuming a ``.partial`` left by a
    stopped download with a ``Range`` request; the SHA-256 is checked before the blob takes its
    final name (``blobs/<sha256>``, the name huggingface_hub gives it: an LFS file's ETag is its
    SHA-256). No snapshot link or ref is made here: ``snapshot_download`` then finds the blob and
    registers it without a transfer. A partial is never a blob: a stop leaves nothing half-
    registered, and ``store`` does not count it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    from .store import repo_folder

    url = hf_hub_url(f.repo_id, f.path, revision=commit, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token or False, endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - every hub failure gets its one line
        raise explain(e, f.repo_id, commit, endpoint) from e
    if meta.etag != f.sha256:  # not a content-addressed LFS blob: leave it to huggingface_hub
        return
    from huggingface_hub.utils import WeakFileLock

    blobs = repo_folder(cache, f.repo_id) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    locks = cache / ".locks" / repo_folder(cache, f.repo_id).name
    locks.mkdir(parents=True, exist_ok=True)
    # One writer per partial (the CLI and the service may download the same set at once); a
    # second waits, then finds the blob there.
    with WeakFileLock(locks / (f.sha256 + PARTIAL + ".lock")):
        _fetch_locked(f, url, meta, blobs, token, tracker, commit, endpoint)


def _fetch_locked(f, url, meta, blobs: Path, token, tracker, commit: str, endpoint: str) -> None:
    import hashlib

    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    blob, part = blobs / f.sha256, blobs / (f.sha256 + PARTIAL)
    if blob.is_file() and blob.stat().st_size == f.size:
        return
    have = part.stat().st_size if part.is_file() else 0
    if have > f.size:
        part.unlink()
        have = 0
    source = url if meta.xet_file_data is not None else meta.location
    headers = build_hf_headers(token=token or False)
    headers["Accept-Encoding"] = "identity"
    if have < f.size:
        with open(part, "ab") as out:
            try:
                bar = tracker.file_bar_class()
                http_get(source, out, resume_size=have, headers=headers, expected_size=f.size,
                         displayed_filename=f.path, tqdm_class=bar)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - cancel or a hub failure: the partial stays
                raise explain(e, f.repo_id, commit, endpoint) from e
    h = hashlib.sha256()
    with open(part, "rb") as src:
        while block := src.read(4 * MIB):
            h.update(block)
    if h.hexdigest() != f.sha256:
        part.unlink()
        raise ModelError(
            f"{f.repo_id}: {f.path} arrived damaged (its SHA-256 is not the hub's); it was "
            "deleted: download again"
        )
    os.replace(part, blob)


# -- the download ---------------------------------------------------------------------------------


def plan_download(
    model_set: ModelSet | str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout_s: float = 15.0,
) -> DownloadPlan:
    """The set's files on the hub now (sizes from its listing) and which are in the cache."""
    from huggingface_hub import HfApi

    s = get_set(model_set) if isinstance(model_set, str) else model_set
    endpoint = (endpoint or hub.endpoint()).rstrip("/")
    cache = Path(cache_dir) if cache_dir else hub.cache_dir()
    api = HfApi(endpoint=endpoint, token=token or False)
    commits, files = {}, []
    for repo_id, refs in s.repos().items():
        revision = refs[0].revision
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True,
                                  timeout=timeout_s)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - every hub failure gets its one line
            raise explain(e, repo_id, revision, endpoint) from e
        commits[repo_id] = info.sha
        snap = snapshot_of(cache, repo_id, info.sha)
        partials = _partials(cache, repo_id)
        for sib in info.siblings or []:
            if matches(sib.rfilename, tuple(patterns_of(refs))):
                size = int(sib.size or 0)
                got = snap / sib.rfilename if snap else None
                cached = bool(got and got.is_file() and got.stat().st_size == size)
                sha = sib.lfs.sha256 if sib.lfs is not None else None
                part = 0 if cached or not sha else min(partials.get(sha, 0), size)
                files.append(PlannedFile(repo_id, sib.rfilename, size, cached, sha, part))
    return DownloadPlan(s.id, commits, files)


def download_set(
    model_set: ModelSet | str,
    *,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_bytes: int = MIB,
    max_workers: int = 4,
    min_interval_s: float = 0.25,
    xet: bool = False,
) -> SetStatus:
    """Fetch every file of the set that is not in the cache; returns the set's status after.

    Raises ``NoNetworkError``, ``GatedModelError``, ``UnknownModelError``, ``DiskFullError``,
    ``DownloadCancelled`` (each a one-line ``StableDreamerError``). ``token``: the hub token
    (None: ``token.load_token()``'s, the stored one or ``HF_TOKEN``)."""
    from huggingface_hub import constants, snapshot_download

    from .token import load_token

    s = get_set(model_set) if isinstance(model_set, str) else model_set
    endpoint = (endpoint or hub.endpoint()).rstrip("/")
    cache = Path(cache_dir) if cache_dir else hub.cache_dir()
    if hub.offline():
        raise NoNetworkError(
            f"offline mode is on (HF_HUB_OFFLINE): unset it to download model set {s.id!r}"
        )
    token = token or load_token()
    plan = plan_download(s, token=token, endpoint=endpoint, cache_dir=cache)
    need = plan.to_fetch_bytes
    free = free_space(cache)
    if need and need + DISK_MARGIN_BYTES > free:
        raise DiskFullError(
            f"not enough free disk for model set {s.id!r}: {human_bytes(need)} to download "
            f"(+{human_bytes(DISK_MARGIN_BYTES)} margin), {human_bytes(free)} free at {cache}; "
            "free space there or point HF_HOME at a larger disk",
            folder=cache, free=free, needed=need + DISK_MARGIN_BYTES,
        )  # fmt: skip
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, max(int(chunk_bytes), 4096))
    if not xet:  # plain HTTP transfers: the cancel, resume and progress described above
        constants.HF_HUB_DISABLE_XET = True
    tracker = _Tracker(plan, progress, cancel, min_interval_s)
    tracker.emit(force=True)
    for f in plan.files:  # large files first, each into a .partial that survives a stop
        if not f.cached and f.sha256:
            tracker.repo_id = f.repo_id
            tracker.check()
            _fetch_resumable(f, plan.commits[f.repo_id], cache, endpoint, token, tracker)
            tracker.file_done(f.repo_id)
    for repo_id, refs in s.repos().items():
        if all(f.cached for f in plan.files if f.repo_id == repo_id) and snapshot_of(
            cache, repo_id, refs[0].revision
        ):
            tracker.repo_done(repo_id)
            continue
        tracker.begin_repo(repo_id)
        tracker.check()
        try:
            snapshot_download(
                repo_id, revision=refs[0].revision, cache_dir=str(cache), endpoint=endpoint,
                token=token or False, allow_patterns=patterns_of(refs),
                tqdm_class=tracker.bar_class(), max_workers=max_workers,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - every hub failure gets its one line
            raise explain(e, repo_id, refs[0].revision, endpoint) from e
        tracker.repo_done(repo_id)
    tracker.emit(force=True)
    return set_status(s, cache)
