"""Which files of a model set are on this machine: the Hugging Face cache or local folders.

Read-only and offline: the cache's layout (``models--owner--name/refs/<revision>`` -> the commit,
``snapshots/<commit>/<file>`` -> the blob) and, when huggingface_hub's ``snapshot_download``
fetched the repository, its cached listing of the commit's files (``trees/<commit>.json``), which
says exactly which files the set's patterns select and how large each is. Without that listing
(files put there by another tool) a part counts as present when each of its components has a
file matching the patterns, and weights (``*.safetensors``) where weights belong.

A part may also come from a local folder (``--sd-model DIR``, the service's ``--sd-model``):
then the folder is checked the same way. ``SetStatus.to_dict()`` is JSON for the wire.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import hub
from .errors import ModelsMissingError
from .sets import ModelRef, ModelSet, get_set

WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
"""Components that need a weight file, not only a config."""


@dataclass
class ModelStatus:
    key: str
    title: str
    repo_id: str
    role: str
    source: str
    """``cache`` (the Hugging Face cache) or ``folder`` (a local folder given instead)."""
    location: str | None
    """The snapshot folder or local folder, None when nothing is there."""
    present: bool
    bytes_present: int
    bytes_expected: int
    """Exact when the cache has the commit's listing, else the set's estimate."""
    exact: bool
    missing: list[str] = field(default_factory=list)
    """Files (with a listing) or components (without) that are not there."""
    gated: bool = False
    licence: str = ""
    hub_page: str = ""


@dataclass
class SetStatus:
    set_id: str
    title: str
    present: bool
    bytes_present: int
    bytes_missing: int
    """Bytes still to download (estimate unless every part's listing is cached)."""
    bytes_partial: int
    """Bytes of weight files a stopped download left (``blobs/*.partial``): the next download
    resumes them (counted in ``bytes_missing`` too)."""
    output_use: str
    commercial: bool
    cache_dir: str
    models: list[ModelStatus]

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def missing_repos(self) -> list[str]:
        return sorted({m.repo_id if m.source == "cache" else m.location or m.repo_id
                       for m in self.models if not m.present})  # fmt: skip


# -- the cache's layout ---------------------------------------------------------------------------


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def snapshot_of(cache: Path, repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot folder the cache has for ``revision`` (a branch or a commit), else None."""
    folder = repo_folder(cache, repo_id)
    commit = revision
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def cached_listing(cache: Path, repo_id: str, commit: str) -> dict[str, int] | None:
    """{path: size} of the commit's files as huggingface_hub cached them, else None."""
    path = repo_folder(cache, repo_id) / "trees" / f"{commit}.json"
    try:
        data = json.loads(path.read_text())
        entries = data["files"]  # huggingface_hub's _tree_cache format 1
        out = {}
        for name, info in entries.items():
            size = info.get("lfs_size") or info.get("size") or 0
            out[name] = int(size)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_sha256(cache: Path, repo_id: str, commit: str) -> dict[str, str]:
    """{path: sha256} of the commit's LFS files, from the cached listing (empty without one)."""
    path = repo_folder(cache, repo_id) / "trees" / f"{commit}.json"
    try:
        files = json.loads(path.read_text())["files"]
        return {n: i["lfs_sha256"] for n, i in files.items() if i.get("lfs_sha256")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size  # follows the snapshot's symlink to the blob
    except OSError:
        return None


def _files_under(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            size = _size(p)
            if size is not None:
                out[p.relative_to(root).as_posix()] = size
    return out


def _component_gaps(files: dict[str, int], ref: ModelRef, strict: bool = True) -> list[str]:
    """Components of ``ref`` with no matching file (or no weights where weights belong).
    ``strict=False`` (a local folder): any file counts, not only the patterns' (fp16) ones: the
    loader falls back to a folder's default weight files."""
    gaps = []
    for comp in ref.components:
        inside = [f for f in files if f.startswith(comp + "/")
                  and (not strict or matches(f, ref.allow_patterns))]  # fmt: skip
        if comp in WEIGHT_COMPONENTS:
            inside = [f for f in inside if f.endswith(".safetensors")]
        if not inside:
            gaps.append(comp + "/")
    return gaps


def model_status(ref: ModelRef, cache: Path, folder: str | None = None) -> ModelStatus:
    """Where ``ref`` is (cache, or ``folder`` given instead), what is there and what is not."""
    base = dict(
        key=ref.key, title=ref.title, repo_id=ref.repo_id, role=ref.role, gated=ref.gated,
        licence=ref.licence.name, hub_page=ref.hub_page,
    )  # fmt: skip
    if folder:
        root = Path(folder).expanduser()
        files = _files_under(root) if root.is_dir() else {}
        mine = {f: s for f, s in files.items() if f.split("/")[0] in ref.components}
        gaps = _component_gaps(files, ref, strict=False) if files else [str(root)]
        return ModelStatus(
            **base, source="folder", location=str(root) if root.is_dir() else None,
            present=not gaps, bytes_present=sum(mine.values()),
            bytes_expected=sum(mine.values()) if not gaps else ref.download_bytes,
            exact=not gaps, missing=gaps,
        )  # fmt: skip
    snap = snapshot_of(cache, ref.repo_id, ref.revision)
    if snap is None:
        return ModelStatus(
            **base, source="cache", location=None, present=False, bytes_present=0,
            bytes_expected=ref.download_bytes, exact=False, missing=list(ref.components),
        )  # fmt: skip
    listing = cached_listing(cache, ref.repo_id, snap.name)
    if listing is not None:
        wanted = {f: s for f, s in listing.items() if matches(f, ref.allow_patterns)}
        have = {f: _size(snap / f) for f in wanted}
        missing = sorted(f for f, s in wanted.items() if have[f] != s)
        present = sum(s for f, s in wanted.items() if have[f] == s)
        # A listing with no file for a component (a renamed repository layout) is a gap too.
        missing += [g for g in _component_gaps(wanted, ref) if g not in missing]
        return ModelStatus(
            **base, source="cache", location=str(snap), present=not missing,
            bytes_present=present, bytes_expected=sum(wanted.values()), exact=True,
            missing=missing,
        )  # fmt: skip
    files = {f: s for f, s in _files_under(snap).items() if matches(f, ref.allow_patterns)}
    gaps = _component_gaps(files, ref)
    return ModelStatus(
        **base, source="cache", location=str(snap), present=not gaps,
        bytes_present=sum(files.values()),
        bytes_expected=max(ref.download_bytes, sum(files.values())), exact=False, missing=gaps,
    )  # fmt: skip


def set_status(
    model_set: ModelSet | str,
    cache_dir: str | os.PathLike | None = None,
    folders: dict[str, str] | None = None,
) -> SetStatus:
    """The state of every part of a set. ``folders``: guidance (deepfloyd_if |
    stable_diffusion) -> a local folder used instead of the hub id (as ``--sd-model DIR``)."""
    s = get_set(model_set) if isinstance(model_set, str) else model_set
    cache = Path(cache_dir) if cache_dir else hub.cache_dir()
    folders = folders or {}
    models = [model_status(m, cache, folders.get(m.guidance)) for m in s.models]
    missing = sum(max(m.bytes_expected - m.bytes_present, 0) for m in models if not m.present)
    partial = sum(p.stat().st_size for repo in s.repos()
                  for p in (repo_folder(cache, repo) / "blobs").glob("*.partial"))  # fmt: skip
    return SetStatus(
        set_id=s.id, title=s.title, present=all(m.present for m in models),
        bytes_present=sum(m.bytes_present for m in models), bytes_missing=missing,
        bytes_partial=partial,
        output_use=s.output_use, commercial=s.commercial, cache_dir=str(cache), models=models,
    )  # fmt: skip


def download_command(set_id: str) -> str:
    return f"stabledreamer models download {set_id}"


def require_set(
    model_set: ModelSet | str,
    cache_dir: str | os.PathLike | None = None,
    folders: dict[str, str] | None = None,
    guidances: set[str] | None = None,
) -> SetStatus:
    """The set's status when every part a run uses is there; else ``ModelsMissingError``
    (code ``models_missing``) naming the set, what is missing and the command that fetches it.
    ``guidances``: only the parts feeding these guidances (a run may use one stage only)."""
    st = set_status(model_set, cache_dir, folders)
    gone = [m for m in st.models if not m.present
            and (guidances is None or _guidance_of(st.set_id, m.key) in guidances)]  # fmt: skip
    if not gone:
        return st
    what = "; ".join(
        f"{m.title}: {m.location} lacks {', '.join(m.missing[:4])}" if m.source == "folder"
        else f"{m.repo_id} ({m.title}, about {_gb(m.bytes_expected - m.bytes_present)})"
        for m in gone
    )  # fmt: skip
    cmd = download_command(st.set_id)
    gated = [m for m in gone if m.gated and m.source == "cache"]
    extra = (
        f"; {gated[0].repo_id} is gated: accept its licence at {gated[0].hub_page} and give a "
        "token (`stabledreamer models token set`)"
        if gated else ""
    )  # fmt: skip
    raise ModelsMissingError(
        f"model set {st.set_id!r} is not downloaded: missing {what}. Run `{cmd}` (or download "
        f"it from the add-on's Models panel){extra}",
        set_id=st.set_id,
        missing=[m.repo_id if m.source == "cache" else str(m.location) for m in gone],
        command=cmd,
    )


def _guidance_of(set_id: str, key: str) -> str:
    return next(m.guidance for m in get_set(set_id).models if m.key == key)


def human_bytes(n: int | float) -> str:
    """1.2 GB, 340 MB, 12 kB (decimal units, as the hub shows sizes)."""
    n = max(float(n), 0.0)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


_gb = human_bytes


def remove_set(model_set: ModelSet | str, cache_dir: str | os.PathLike | None = None,
               keep: tuple[str, ...] = ()) -> list[Path]:  # fmt: skip
    """Delete the cached repositories of a set (not local folders), except those in ``keep``
    (repositories another set still uses, the caller's choice). Returns the folders deleted."""
    s = get_set(model_set) if isinstance(model_set, str) else model_set
    cache = Path(cache_dir) if cache_dir else hub.cache_dir()
    gone = []
    for repo in s.repos():
        if repo in keep:
            continue
        folder = repo_folder(cache, repo)
        if folder.is_dir():
            shutil.rmtree(folder)
            gone.append(folder)
        lock = cache / ".locks" / folder.name
        if lock.is_dir():
            shutil.rmtree(lock, ignore_errors=True)
    return gone


def require_run_models(cfg, cache_dir: str | os.PathLike | None = None) -> SetStatus | None:
    """For a run's config (a ``RunConfig``): ``ModelsMissingError`` at once when a model its
    stages load is a hub id of its set that is not in the cache, or a local folder that lacks a
    part. Sources that are neither the set's ids nor folders (``--sd-model other/id``) are left
    to the preflight. None when the run uses no set (reconstruction, the example prior)."""
    if not getattr(cfg, "models", ""):
        return None
    s = get_set(cfg.models)
    used = {st.guidance for st in cfg.stages} & {"deepfloyd_if", "stable_diffusion"}
    folders, check = {}, set()
    for guidance in used:
        source = str(getattr(cfg, guidance).model)
        if source == s.source_for(guidance):
            check.add(guidance)
        elif _is_folder(source):
            folders[guidance] = source
            check.add(guidance)
    if not check:
        return None
    return require_set(s, cache_dir, folders, guidances=check)


def _is_folder(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "."))
        or source.count("/") != 1
        or "\\" in source
        or Path(source).expanduser().exists()
    )
