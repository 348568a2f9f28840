"""The model messages of the service (feature ``models``, ``docs/protocol.md``) and the text jobs
that wait for their models.

- ``list_models``: every set, its licence line and which of its models are here (``models.store``:
  a few file checks, no torch, answered at once);
- ``download_models``: a thread of the service process runs ``models.download.download_set``
  (I/O only, no torch), one download per set at a time; its progress reaches every client that
  asked (``download_state``, the newest one waits for a slow reader) and every job waiting on it
  (``progress`` with stage ``waiting_models``), its end is never dropped. A failed download loses
  nothing (completed files stay in the cache) and the service keeps serving;
- ``cancel_download``: by the client key that started it, or an operator;
- ``set_token``: only over CURVE and from an operator key; stored owner-only by
  ``models.token``, never logged, never sent back (``token_state`` says only whether one is set
  and where it comes from).

A text job names its set (``submit.models``, else ``serve --models``). When the set is not here
the submit is refused at once with ``models_missing`` (``SubmitCheck`` finds it), unless it asked
``wait_for_models``: then the job is accepted, stays ``queued`` with stage ``waiting_models``
while the set downloads (started if none runs) and starts when the set is present; a download
that fails fails the waiting jobs with ``models_missing`` and the reason.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stabledreamer_protocol import (
    CancelDownload,
    DownloadModels,
    DownloadState,
    ErrorCode,
    ListModels,
    ModelInfo,
    Models,
    ModelSetInfo,
    Progress,
    ProtocolError,
    SetToken,
    Submit,
    TokenState,
)
from stabledreamer_protocol.model_messages import Licence

from ..errors import StableDreamerError
from ..models import MODEL_SETS, ModelSet, get_set, set_status
from ..models.store import human_bytes

if TYPE_CHECKING:
    from .delivery import Peer
    from .jobs import JobRecord
    from .service import Service
    from .submit import Prepared

log = logging.getLogger("stabledreamer.service")

WAITING_STAGE = "waiting_models"
"""The stage of a queued text job waiting for its model set's download."""
PROGRESS_INTERVAL_S = 0.25
"""At most this often a download's progress goes out."""
GUIDANCE_OF = {"if": "deepfloyd_if", "sd": "stable_diffusion"}


@dataclass
class SetDownload:
    """The newest download of one set: its state and who hears of it."""

    set_id: str
    owner: str
    """The client key that started it (it, or an operator, may cancel it)."""
    state: DownloadState
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    followers: set[bytes] = field(default_factory=set)
    """Identities of the clients that asked for it (or to cancel it)."""

    @property
    def running(self) -> bool:
        return self.state.state == "running"


def reason(e: BaseException) -> tuple[str, str, str]:
    """(code, one line, link) of why a download stopped (``DOWNLOAD_CODES``)."""
    from ..atomic import DiskFullError
    from ..models.errors import (
        DownloadCancelled,
        GatedModelError,
        NoNetworkError,
        UnknownModelError,
    )

    line = (str(e).splitlines() or [type(e).__name__])[0][:4000]
    if isinstance(e, DownloadCancelled):
        return "cancelled", line, ""
    if isinstance(e, GatedModelError):
        return "gated", line, e.page
    if isinstance(e, NoNetworkError):
        return "no_network", line, ""
    if isinstance(e, DiskFullError):
        return "disk_full", line, ""
    if isinstance(e, UnknownModelError):
        return "unknown_model", line, ""
    if isinstance(e, StableDreamerError):
        return "model_unavailable", line, ""
    return "internal", f"{type(e).__name__}: {line}"[:4000], ""


def token_state(re: str | None = None) -> TokenState:
    """Whether the backend has a hub token and where from (``models.token``), never the token."""
    from ..models.token import TokenError, token_source

    try:
        token, where = token_source()
    except TokenError:  # a token file readable by others is not used
        return TokenState(re=re, set=False, source="file")
    source = {"HF_TOKEN": "environment", "hf auth login": "hf_login", "none": "none"}
    return TokenState(re=re, set=bool(token), source=source.get(where, "file"))


class ModelsService:
    """The model sets' part of one :class:`~.service.Service` (its loop thread only, except the
    download threads, which talk to it through ``events`` and a wake-up pipe)."""

    def __init__(self, service: Service) -> None:
        self.svc = service
        self.default_set = service.cfg.model_set
        self.folders = {
            GUIDANCE_OF[k]: v
            for k, v in service.cfg.model_ids().items()
            if k in GUIDANCE_OF and Path(v).expanduser().is_dir()
        }
        """Local folders given to ``serve`` instead of the sets' hub ids (guidance -> folder)."""
        self.downloads: dict[str, SetDownload] = {}
        self.waiting: dict[str, str] = {}
        """Job -> the set it waits for."""
        self.cleared: set[str] = set()
        """Waiting jobs whose set was found present (they may start)."""
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.handlers = {
            ListModels: self.on_list,
            DownloadModels: self.on_download,
            CancelDownload: self.on_cancel,
            SetToken: self.on_set_token,
        }

    # --- life -----------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._wake_r

    def close(self, timeout_s: float = 2.0) -> None:
        """Cancel running downloads (completed files stay in the cache) and wait a little."""
        for dl in self.downloads.values():
            dl.cancel.set()
        end = time.monotonic() + timeout_s
        for dl in self.downloads.values():
            if dl.thread is not None:
                dl.thread.join(max(0.0, end - time.monotonic()))
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _post(self, set_id: str, kind: str, payload) -> None:
        """From a download thread: hand an event to the loop and wake it."""
        self.events.put((set_id, kind, payload))
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # the pipe is full (the loop is awake anyway) or closed
            pass

    # --- the sets -------------------------------------------------------------------------------

    def status(self, s: ModelSet | str):
        return set_status(s, folders=self.folders)

    def set_info(self, s: ModelSet) -> ModelSetInfo:
        st = self.status(s)
        dl = self.downloads.get(s.id)
        return ModelSetInfo(
            id=s.id, title=s.title, summary=s.summary, present=st.present,
            bytes_present=st.bytes_present, bytes_missing=st.bytes_missing,
            download_bytes=s.download_bytes, memory_tier_gb=s.memory_tier_gb,
            output_use=s.output_use, commercial=s.commercial, gated=s.gated,
            licences=[Licence(lic.name, lic.url) for lic in s.licences], notes=list(s.notes),
            models=[
                ModelInfo(
                    key=m.key, title=m.title, repo_id=m.repo_id, role=m.role, present=m.present,
                    source=m.source, bytes_present=m.bytes_present,
                    bytes_expected=m.bytes_expected, licence=m.licence, gated=m.gated,
                    hub_page=m.hub_page,
                )
                for m in st.models
            ],
            download=dl.state.state if dl is not None else "idle",
        )  # fmt: skip

    def _set(self, set_id: str) -> ModelSet:
        try:
            return get_set(set_id)
        except StableDreamerError:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"unknown model set {set_id[:40]!r}; the backend has {', '.join(MODEL_SETS)}",
                "Pick a set from the backend's list (list_models).",
            ) from None

    # --- commands -------------------------------------------------------------------------------

    def on_list(self, peer: Peer, msg: ListModels) -> None:
        tok = token_state()
        reply = Models(
            re=msg.id,
            sets=[self.set_info(s) for s in MODEL_SETS.values()],
            default=self.default_set,
            token_set=tok.set,
            token_source=tok.source,
        )
        self.svc.delivery.reply(peer, reply)

    def on_download(self, peer: Peer, msg: DownloadModels) -> None:
        s = self._set(msg.set)
        dl = self.downloads.get(s.id)
        if dl is None or not dl.running:
            st = self.status(s)
            if st.present:
                done = DownloadState(
                    re=msg.id, set=s.id, state="done", bytes_done=st.bytes_present,
                    bytes_total=st.bytes_present, message=f"model set {s.id} is already here",
                )  # fmt: skip
                self.svc.delivery.reply(peer, done)
                return
            dl = self.start(s.id, peer.owner, st.bytes_missing)
        dl.followers.add(peer.identity)
        self.svc.delivery.reply(peer, _answer(dl.state, msg.id))

    def on_cancel(self, peer: Peer, msg: CancelDownload) -> None:
        s = self._set(msg.set)
        dl = self.downloads.get(s.id)
        if dl is None:
            self.svc.delivery.reply(peer, DownloadState(re=msg.id, set=s.id, state="idle"))
            return
        if dl.running:
            if not (peer.operator or (dl.owner and dl.owner == peer.owner)):
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"the download of model set {s.id} was started by another client key",
                    "Only the client that started a download (or an operator key) may cancel it.",
                )
            dl.cancel.set()
            dl.followers.add(peer.identity)
            log.info("model set %s: download cancel asked", s.id)
        answer = _answer(dl.state, msg.id)
        if dl.running:
            answer.message = "cancelling"
        self.svc.delivery.reply(peer, answer)

    def on_set_token(self, peer: Peer, msg: SetToken) -> None:
        from ..models.token import TokenError, clear_token, save_token

        if not self.svc.cfg.curve:
            raise ProtocolError(
                ErrorCode.CURVE_REQUIRED,
                "this backend runs without CURVE: a hub token is not sent over an unencrypted link",
            )
        if not peer.operator:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "only an operator key may set the backend's hub token",
                "Put this client's public key in the backend's keys/operators/ folder, or set "
                "the token on the backend machine: `stabledreamer models token set`.",
            )
        try:
            if msg.token.strip():
                where = save_token(msg.token)
                log.info("hub token stored in %s (value not logged)", where)
            elif clear_token():
                log.info("stored hub token removed")
        except TokenError as e:  # its message never contains the token
            raise ProtocolError(ErrorCode.BAD_FIELD, str(e)) from None
        except OSError as e:
            raise ProtocolError(ErrorCode.INTERNAL, f"cannot store the token: {e}") from None
        finally:
            msg.token = ""
        self.svc.delivery.reply(peer, token_state(msg.id))

    # --- downloads ------------------------------------------------------------------------------

    def start(self, set_id: str, owner: str, bytes_missing: int = 0) -> SetDownload:
        """Start downloading ``set_id`` on a thread (or return the download already running)."""
        dl = self.downloads.get(set_id)
        if dl is not None and dl.running:
            return dl
        state = DownloadState(set=set_id, state="running", bytes_total=bytes_missing,
                              message="starting")  # fmt: skip
        old = dl.followers if dl is not None else set()
        dl = SetDownload(set_id, owner, state, followers=set(old))
        dl.thread = threading.Thread(
            target=self._run, args=(dl,), name=f"download-{set_id}", daemon=True
        )
        self.downloads[set_id] = dl
        log.info("model set %s: download started (about %s missing)", set_id,
                 human_bytes(bytes_missing))  # fmt: skip
        dl.thread.start()
        return dl

    def _run(self, dl: SetDownload) -> None:
        """The download thread: ``download_set``, its progress and its end as events."""
        from ..models.download import download_set

        try:
            download_set(
                dl.set_id,
                progress=lambda p: self._post(dl.set_id, "progress", p),
                cancel=dl.cancel,
                min_interval_s=PROGRESS_INTERVAL_S,
            )
            self._post(dl.set_id, "done", None)
        except BaseException as e:  # noqa: BLE001 - every end is reported; the service goes on
            self._post(dl.set_id, "failed", e)

    def pump(self) -> None:
        """On the loop: apply what the download threads reported."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                set_id, kind, payload = self.events.get_nowait()
            except queue.Empty:
                return
            dl = self.downloads.get(set_id)
            if dl is None:
                continue
            if kind == "progress":
                self._on_progress(dl, payload)
            elif kind == "done":
                self._on_end(dl, "done", "", f"model set {set_id} downloaded", "")
            else:
                code, line, link = reason(payload)
                if code == "internal":
                    log.error("model set %s: download failed", set_id, exc_info=payload)
                state = "cancelled" if code == "cancelled" else "failed"
                self._on_end(dl, state, code, line, link)

    def _on_progress(self, dl: SetDownload, p) -> None:
        if not dl.running:
            return
        st = dl.state
        st.bytes_done, st.bytes_total = p.bytes_done, p.bytes_total
        st.files_done, st.files_total = p.files_done, p.files_total
        st.rate_bps = p.rate_bps or None
        st.eta_s, st.elapsed_s, st.model, st.message = p.eta_s, p.elapsed_s, p.repo_id, ""
        self._tell(dl, latest=True)
        for job, set_id in self.waiting.items():
            if set_id == dl.set_id:
                event = Progress(
                    job=job,
                    stage=WAITING_STAGE,
                    step=st.bytes_done,
                    total=st.bytes_total,
                    elapsed_s=st.elapsed_s,
                    eta_s=st.eta_s,
                )
                self.svc.delivery.broadcast(job, event, kind="progress")  # fmt: skip

    def _on_end(self, dl: SetDownload, state: str, code: str, line: str, link: str) -> None:
        st = dl.state
        st.state, st.code, st.message, st.link = state, code, line, link
        st.rate_bps, st.eta_s = None, None
        if state == "done":
            st.bytes_done = st.bytes_total
        logf = log.info if state != "failed" else log.warning
        logf("model set %s: download %s%s", dl.set_id, state, f": {line}" if code else "")
        self._tell(dl, latest=False)
        self._release(dl)

    def _tell(self, dl: SetDownload, latest: bool) -> None:
        for identity in list(dl.followers):
            peer = self.svc.delivery.peers.get(identity)
            if peer is None:  # gone
                dl.followers.discard(identity)
                continue
            msg = _answer(dl.state, None)
            if latest:
                self.svc.delivery.latest(peer, f"download/{dl.set_id}", msg)
            else:
                self.svc.delivery.reply(peer, msg)

    # --- jobs that wait for their models --------------------------------------------------------

    def admit(self, msg: Submit, prepared: Prepared) -> None:
        """A new text job: refused with ``models_missing`` when its set is not here, unless it
        asked to wait (then ``holds`` keeps it queued until the set is downloaded)."""
        missing = prepared.models_missing
        if prepared.kind != "generate" or missing is None or msg.wait_for_models:
            return
        raise ProtocolError(
            ErrorCode.MODELS_MISSING,
            str(missing)[:4000],
            f"Download model set {prepared.model_set} (the add-on's Models panel, or "
            f"`stabledreamer models download {prepared.model_set}` on the backend), or submit "
            "with wait_for_models to start the download and run when it is done.",
        )

    def holds(self, rec: JobRecord) -> bool:
        """Whether the queued job ``rec`` must wait for its models (the scheduler skips it)."""
        if rec.job in self.waiting:
            return True
        if not rec.wait_models or rec.kind != "generate" or rec.job in self.cleared:
            return False
        st = self.status(rec.model_set or self.default_set)
        if st.present:
            self.cleared.add(rec.job)
            if rec.stage == WAITING_STAGE:  # resumed after a restart: the set came meanwhile
                rec.stage = ""
            return False
        set_id = st.set_id
        dl = self.start(set_id, rec.owner, st.bytes_missing)
        self.waiting[rec.job] = set_id
        rec.stage, rec.step, rec.total = WAITING_STAGE, dl.state.bytes_done, dl.state.bytes_total
        log.info("job %s waits for model set %s", rec.job, set_id, extra={"job": rec.job})
        self.svc._set_state(
            rec, "queued",
            f"waiting for model set {set_id}: downloading about {human_bytes(st.bytes_missing)}",
        )  # fmt: skip
        return True

    def _release(self, dl: SetDownload) -> None:
        """A download ended: its waiting jobs start (the set is here) or fail (it is not)."""
        for job in [j for j, s in self.waiting.items() if s == dl.set_id]:
            del self.waiting[job]
            rec = self.svc.store.get(job)
            if rec is None or rec.state != "queued":
                continue  # cancelled or deleted meanwhile
            st = self.status(dl.set_id)
            rec.stage, rec.step, rec.total = "", 0, 0
            if st.present:
                self.cleared.add(job)
                self.svc._set_state(rec, "queued", "")
                continue
            why = dl.state.message if dl.state.state != "done" else (
                f"still missing {', '.join(st.missing_repos)}"
            )  # fmt: skip
            if dl.state.link:
                why += f" (accept the licence at {dl.state.link})"
            self.svc._fail(
                rec,
                ErrorCode.MODELS_MISSING,
                f"model set {dl.set_id} could not be downloaded: {why}"[:4000],
            )


def _answer(state: DownloadState, re: str | None) -> DownloadState:
    """A copy of a download's state to send (``re``: the request it answers)."""
    fields = state.body()
    return DownloadState(re=re, **fields)
