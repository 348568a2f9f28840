"""Check a model set: its files on this machine, and (online) that its hub ids still resolve.

Offline, ``verify_set`` is ``store.set_status`` read as checks: every part present, every file
of the cached listing there with its size; with ``hashes`` every weight file's SHA-256 against
the listing's (the hub's LFS hashes). Online (``online=True``) it also asks the hub, for
each repository, whether the id and revision resolve and whether this token may download it
(``HfApi.model_info`` and ``auth_check``; nothing is downloaded): the way to find a withdrawn id
(``sets`` says where and when each was last confirmed from here).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import hub
from .sets import ModelRef, ModelSet, get_set
from .store import ModelStatus, SetStatus, human_bytes, set_status

OK, MISSING, FAIL = "ok", "missing", "fail"


@dataclass
class RepoCheck:
    repo_id: str
    status: str
    """ok | missing (not downloaded) | fail (online: does not resolve, or no access)."""
    detail: str


@dataclass
class Verification:
    set_id: str
    ok: bool
    status: SetStatus
    checks: list[RepoCheck] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def verify_set(
    model_set: ModelSet | str,
    *,
    online: bool = False,
    cache_dir: str | os.PathLike | None = None,
    folders: dict[str, str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout_s: float = 15.0,
    hashes: bool = False,
) -> Verification:
    """``hashes``: also read every weight file and compare its SHA-256 with the hub's listing
    (minutes for a real set: tens of GB read)."""
    s = get_set(model_set) if isinstance(model_set, str) else model_set
    cache = Path(cache_dir) if cache_dir else hub.cache_dir()
    st = set_status(s, cache, folders)
    checks = []
    for m, ref in zip(st.models, s.models, strict=True):
        if m.present:
            where = "local folder" if m.source == "folder" else "cache"
            how = "sizes checked against the hub's listing" if m.exact else "no listing cached"
            detail = f"{m.title}: {human_bytes(m.bytes_present)} in the {where} ({how})"
            bad = _bad_hashes(cache, m, ref) if hashes and m.source == "cache" else []
            if bad:
                detail = f"{m.title}: SHA-256 does not match the hub's for {', '.join(bad[:3])}"
                checks.append(RepoCheck(m.repo_id, FAIL, detail + " (download it again)"))
            else:
                checks.append(
                    RepoCheck(m.repo_id, OK, detail + (", SHA-256 checked" if hashes else ""))
                )
        else:
            gaps = ", ".join(m.missing[:4]) + (" ..." if len(m.missing) > 4 else "")
            checks.append(RepoCheck(m.repo_id, MISSING, f"{m.title}: missing {gaps}"))
    if online:
        checks += check_online(s, token=token, endpoint=endpoint, timeout_s=timeout_s)
    ok = all(c.status == OK for c in checks)
    return Verification(s.id, ok, st, checks)


def _bad_hashes(cache: Path, m: ModelStatus, ref: ModelRef) -> list[str]:
    """Files of a present cached part whose SHA-256 differs from the cached listing's."""
    import hashlib

    from .store import cached_sha256, matches

    snap = Path(str(m.location))
    bad = []
    for name, want in sorted(cached_sha256(cache, m.repo_id, snap.name).items()):
        if not matches(name, ref.allow_patterns):
            continue
        h = hashlib.sha256()
        with open(snap / name, "rb") as f:
            while block := f.read(2**22):
                h.update(block)
        if h.hexdigest() != want:
            bad.append(name)
    return bad


def check_online(
    model_set: ModelSet | str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    timeout_s: float = 15.0,
) -> list[RepoCheck]:
    """For each repository of the set: does its id and revision resolve on the hub now, and may
    this token download it (gated repositories)."""
    from huggingface_hub import HfApi

    from .download import explain
    from .errors import ModelError
    from .token import load_token

    s = get_set(model_set) if isinstance(model_set, str) else model_set
    endpoint = (endpoint or hub.endpoint()).rstrip("/")
    token = token or load_token()
    api = HfApi(endpoint=endpoint, token=token or False)
    out = []
    for repo_id, refs in s.repos().items():
        rev = refs[0].revision
        try:
            info = api.model_info(repo_id, revision=rev, timeout=timeout_s)
            if any(r.gated for r in refs):
                api.auth_check(repo_id)
            out.append(RepoCheck(repo_id, OK, f"resolves on {endpoint} ({rev} = {info.sha[:12]})"))
        except Exception as e:  # noqa: BLE001 - each failure becomes its one line
            try:
                err: Exception = explain(e, repo_id, rev, endpoint)
            except Exception as raw:  # noqa: BLE001 - not a hub error: still one line
                err = ModelError(f"{repo_id}: {type(raw).__name__}: {raw}")
            out.append(RepoCheck(repo_id, FAIL, str(err)))
    return out
