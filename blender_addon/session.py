"""The add-on's link to one backend, without bpy: connection, the followed jobs, what to show.

A :class:`Session` wraps the protocol's :class:`~stabledreamer_protocol.client.Client` in a state
machine that never blocks, so Blender's timer can call :meth:`Session.poll` on the main thread:

``disconnected`` -> :meth:`connect` -> ``connecting`` (``hello`` is sent once the socket is up;
the backend's answer is waited for across polls) -> ``connected`` -> silence longer than
``lost_after_s`` (a ``ping`` goes out every ``ping_interval_s``) -> ``lost``: the socket is
rebuilt, the handshake repeated and the followed job re-attached (it keeps running on the
backend meanwhile) -> ``connected``.

Jobs form a queue: every job this client submitted (or found again on the backend under its
key) is followed at once, in :attr:`Session.jobs`; one of them is *selected* (its preview and
debug strip are shown). The backend's listing of active jobs (``list_jobs``, every few seconds)
brings their queue positions, this client's jobs after a reconnect, and the count of other
clients' jobs (shown, never listed).

:meth:`poll` returns what the scene should change, as plain objects: :class:`PreviewUpdate`,
:class:`DebugUpdate`, :class:`ResultUpdate`, :class:`JobUpdate` (state, for the history),
:class:`LogUpdate` and :class:`Notice` (messages for ``report()``). Everything here is testable
without Blender; ``poll.py`` applies the updates to the scene.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stabledreamer_protocol import (
    TERMINAL_STATES,
    DebugImage,
    Error,
    ErrorCode,
    GetLogs,
    Hello,
    Jobs,
    JobState,
    Logs,
    Pong,
    Preview,
    Progress,
    ProtocolError,
    Result,
    new_id,
)
from stabledreamer_protocol.client import Client, ResultDownloaded
from stabledreamer_protocol.keys import KeyFiles, default_key_dir

PING_INTERVAL_S = 2.0
LOST_AFTER_S = 8.0
CONNECT_TIMEOUT_S = 5.0
"""How long a handshake may take before the backend counts as not running."""
STARTUP_TIMEOUT_S = 180.0
"""The same for a backend this add-on has just started (it imports torch and warms up)."""
LIST_INTERVAL_S = 2.0
"""How often the backend's list of active jobs is asked for (queue positions, other clients)."""
MAX_SETTLED = 12
"""Finished jobs kept in the panel's list (the history keeps them all)."""


class SessionError(Exception):
    """Something the user asked for cannot be done now; the text says what to do."""


@dataclass
class ConnectionSettings:
    endpoint: str
    use_curve: bool = True
    key_dir: str = ""
    """CURVE key folder ("" = the backend's default, ``~/.config/stabledreamer/keys``)."""
    client_secret: str = ""
    """Overrides: this client's secret key file and the backend's public key file."""
    server_public: str = ""

    def key_files(self) -> tuple[str, str] | None:
        """(client secret, server public) paths, checked to exist; None without CURVE."""
        if not self.use_curve:
            return None
        folder = KeyFiles(Path(self.key_dir).expanduser() if self.key_dir else default_key_dir())
        secret = Path(self.client_secret).expanduser() if self.client_secret else None
        public = Path(self.server_public).expanduser() if self.server_public else None
        secret = secret or folder.client_secret
        public = public or folder.server_public
        for path, what in ((secret, "client secret key"), (public, "backend public key")):
            if not path.is_file():
                raise SessionError(
                    f"The {what} {path} is missing. Start the backend once on this machine "
                    "(it makes the keys), or set the key files in the add-on's preferences."
                )
        return str(secret), str(public)


@dataclass
class JobRequest:
    prompt: str
    negative: str = ""
    preset: str = "standard"
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    init_points: np.ndarray | None = None
    init_colors: np.ndarray | None = None
    preview_points: int | None = None
    parent: str | None = None
    """Refine or continue this finished job (``mode``; the backend's feature ``followups``)."""
    mode: str | None = None
    steps: int | None = None
    """continue: steps to add; refine: steps of the rerun stage (None: the parent's)."""
    group: str = ""
    """Variations of one prompt share a group (their results land side by side)."""
    models: str | None = None
    """The model set (None: the backend's default); sent to backends with the feature."""
    wait_for_models: bool = False


@dataclass
class JobView:
    """What the panel shows about the followed job."""

    job: str
    prompt: str = ""
    state: str = "queued"
    stage: str = ""
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    num_gaussians: int = 0
    queue_position: int | None = None
    seed: int | None = None
    message: str = ""
    download: float | None = None
    """Fraction of the result downloaded, while it downloads."""
    imported: bool = False
    download_failed: bool = False
    """The result could not be downloaded (the panel offers to retry)."""
    preview_points: int | None = None
    """What the submit asked for (a re-attach asks for the same)."""
    acknowledged: bool = False
    """The backend has sent a state for this job (so it was accepted)."""
    parent: str | None = None
    mode: str | None = None
    group: str = ""
    started: float | None = None
    """Session clock when it was seen running first, and when it was seen done."""
    ended: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: finished, and a done job's result imported (or failed)."""
        return self.terminal and (self.state != "done" or self.imported or self.download_failed)

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total else 0.0

    def progress_text(self) -> str:
        if self.state == "queued" and self.stage == "waiting_models":
            done = f"{self.step / self.total:.0%}" if self.total else "starting"
            return f"Waiting for its models: downloading, {done}"
        if self.state == "queued":
            pos = self.queue_position
            return (
                "Queued"
                + (f" ({pos} ahead)" if pos else "")
                + (f": {self.message}" if self.message == "cancelling" else "")
            )
        if self.state == "running":
            text = f"{self.stage or 'starting'} {self.step}/{self.total}"
            if self.eta_s is not None and math.isfinite(self.eta_s):
                text += f", {format_duration(self.eta_s)} left"
            return text
        if self.state == "done" and self.download_failed:
            return "Done, but the download failed: Retry Download"
        if self.state == "done" and self.download is not None and not self.imported:
            return f"Downloading result {self.download:.0%}"
        return self.state.capitalize() + (f": {self.message}" if self.message else "")


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class PreviewUpdate:
    job: str
    gaussians: dict[str, np.ndarray]
    step: int
    total_gaussians: int


@dataclass
class DebugUpdate:
    job: str
    image: np.ndarray
    """uint8 [H, W, 3|4], row 0 at the top."""
    labels: list[str]
    stage: str
    step: int


@dataclass
class ResultUpdate:
    job: str
    files: dict[str, bytes]
    metrics: dict[str, Any]


@dataclass
class JobUpdate:
    view: JobView


@dataclass
class LogUpdate:
    lines: list[str]


@dataclass
class Notice:
    level: str
    """``INFO``, ``WARNING`` or ``ERROR`` (Blender's report types)."""
    text: str


class Session:
    """One backend connection and the job it follows. Not thread-safe: main thread only."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        clock=time.monotonic,
        ping_interval_s: float = PING_INTERVAL_S,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.ping_interval_s = ping_interval_s
        self.lost_after_s = lost_after_s
        self.client: Client | None = None
        self.state = "disconnected"
        self.status = "Not connected"
        self.unreachable = False
        """The last connect got no answer: the panel offers to start a backend."""
        self.server: Hello | None = None
        self.jobs: dict[str, JobView] = {}
        """Every job followed, in submission order."""
        self.selected: str | None = None
        """The job whose preview and debug strip are shown."""
        self.others_active = 0
        """Jobs queued or running on the backend for other client keys (counted, not shown)."""
        self.latest_preview: dict[str, PreviewUpdate] = {}
        """The newest preview of each running job (shown at once when it is selected)."""
        self.latest_debug: dict[str, DebugUpdate] = {}
        """The same for the debug strips."""
        self.log_lines: list[str] = []
        self._hello_id: str | None = None
        self._deadline = 0.0
        self._connect_timeout = CONNECT_TIMEOUT_S
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._logs_id: str | None = None
        self._list_id: str | None = None
        self._last_list = 0.0
        self.handlers: list = []
        """``handler(event, out) -> bool`` called first for every event; True consumes it
        (``models_link``)."""

    # --- jobs ---------------------------------------------------------------------------------

    @property
    def job(self) -> JobView | None:
        """The selected job."""
        return self.jobs.get(self.selected) if self.selected else None

    @job.setter
    def job(self, view: JobView | None) -> None:
        if view is None:
            self.selected = None
            return
        self.jobs[view.job] = view
        self.selected = view.job

    @property
    def busy(self) -> bool:
        """The selected job is not finished (or its result still downloading)."""
        job = self.job
        return job is not None and not job.settled

    @property
    def active_jobs(self) -> list[JobView]:
        return [j for j in self.jobs.values() if not j.settled]

    def _add(self, view: JobView) -> None:
        """Follow ``view``; it is selected unless the selected job is still going."""
        self.jobs[view.job] = view
        if not self.busy:
            self.selected = view.job
        settled = [j for j in self.jobs.values() if j.settled and j.job != self.selected]
        for old in settled[: max(0, len(settled) - MAX_SETTLED)]:
            del self.jobs[old.job]

    def eta(self, view: JobView) -> float | None:
        """Seconds until ``view`` is done, roughly: the backend's estimate while it runs; while
        queued, the estimates of this client's running jobs plus, for it and every job ahead of
        it, the mean duration of the jobs this session saw from start to end (None until one
        did)."""
        if view.state == "running":
            return view.eta_s
        if view.state != "queued" or view.queue_position is None:
            return None
        seen = [v.ended - v.started for v in self.jobs.values()
                if v.started is not None and v.ended is not None]  # fmt: skip
        if not seen:
            return None
        running = sum(v.eta_s or 0.0 for v in self.jobs.values() if v.state == "running")
        return running + (view.queue_position + 1) * sum(seen) / len(seen)

    def select(self, job: str) -> tuple[PreviewUpdate | None, DebugUpdate | None]:
        """Show ``job``: its newest preview and debug strip, when they arrived, are returned
        to draw at once."""
        if job not in self.jobs:
            raise SessionError("That job is no longer in the list.")
        self.selected = job
        return self.latest_preview.get(job), self.latest_debug.get(job)

    # --- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Start connecting (returns at once; :meth:`poll` completes the handshake)."""
        self.close()
        keys = self.settings.key_files()
        client = Client(
            self.settings.endpoint,
            client_secret=keys[0] if keys else None,
            server_public=keys[1] if keys else None,
            software="stabledreamer-blender",
        )
        try:
            client.connect()
        except Exception as e:  # zmq.ZMQError: a malformed address, bad key files
            raise SessionError(
                f"Cannot connect to {self.settings.endpoint!r}: {e}. Check the backend address "
                "(tcp://HOST:PORT) and the key files in the add-on's preferences."
            ) from None
        self.client = client
        self.state = "connecting"
        self.status = f"Connecting to {self.settings.endpoint}..."
        self.unreachable = False
        self._hello_id = None
        self._connect_timeout = timeout_s
        self._deadline = self.clock() + timeout_s

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        if self.state != "disconnected":
            self.status = "Disconnected"
        self.state = "disconnected"
        self.server = None

    # --- commands -----------------------------------------------------------------------------

    def _need_connection(self) -> Client:
        if not self.connected or self.client is None:
            raise SessionError(
                "Not connected to a backend: press Connect (or Start Backend) first."
            )
        return self.client

    def submit(self, req: JobRequest) -> str:
        """Send a text job; returns its id. Raises :class:`SessionError` with what to do."""
        client = self._need_connection()
        prompt = req.prompt.strip()
        if not prompt and req.mode != "continue":
            raise SessionError('The prompt is empty: say what to make, e.g. "a ceramic teapot".')
        limit = client.send_limits.max_prompt_chars
        for name, text in (("prompt", prompt), ("negative prompt", req.negative)):
            if len(text) > limit:
                raise SessionError(
                    f"The {name} has {len(text):,} characters; the backend takes at most "
                    f"{limit:,}. Shorten it."
                )
        presets = self.server.presets if self.server is not None else []
        if presets and req.preset not in presets:
            raise SessionError(
                f"The backend has no preset {req.preset!r} (it offers "
                f"{', '.join(presets)}): update the backend or pick another."
            )
        features = self.server.features if self.server is not None else []
        if req.parent is not None and "followups" not in features:
            raise SessionError(
                "This backend cannot refine or continue a run (it predates that): update it."
            )
        if req.init_points is not None and "init_points" not in features:
            raise SessionError(
                "This backend cannot start from a mesh (no init_points support): update it, "
                "or turn off Start from Selected Mesh."
            )
        job = new_id()
        fields: dict[str, Any] = dict(
            negative=req.negative,
            preset=req.preset,
            seed=req.seed,
            overrides=req.overrides,
            preview_points=req.preview_points,
        )
        if req.parent is not None:
            fields.update(parent=req.parent, mode=req.mode, steps=req.steps)
        if "models" in features and (req.models or req.wait_for_models):
            fields.update(models=req.models, wait_for_models=req.wait_for_models)
        if req.init_points is not None:
            fields["init_points"] = np.ascontiguousarray(req.init_points, dtype="<f4")
            if req.init_colors is not None:
                fields["init_colors"] = np.ascontiguousarray(req.init_colors, dtype="<f4")
        try:
            client.submit(prompt, job=job, **fields)
        except ProtocolError as e:
            raise SessionError(f"{e.message}. {e.hint}".strip()) from None
        self._add(
            JobView(
                job=job, prompt=prompt, seed=req.seed, preview_points=req.preview_points,
                parent=req.parent, mode=req.mode, group=req.group,
            )
        )  # fmt: skip
        self.status = self._connected_status()
        self._last_list = 0.0  # the queue changed: ask for positions at the next poll
        return job

    def follow(
        self, job: str, prompt: str = "", preview_points: int | None = None, **kw: Any
    ) -> None:
        """Follow a job submitted earlier (after a reload or a reconnect): attach to it."""
        if job in self.jobs:
            return
        self._add(
            JobView(
                job=job, prompt=prompt, state="queued", message="re-attaching",
                preview_points=preview_points, **kw,
            )
        )  # fmt: skip
        if self.connected and self.client is not None:
            self.client.attach(job, preview_points)

    def retry_download(self, job_id: str | None = None) -> None:
        """Ask for a finished job's result again (re-attaching sends its manifest)."""
        client = self._need_connection()
        job = self.jobs.get(job_id) if job_id else self.job
        if job is None or job.state != "done" or job.imported:
            raise SessionError("No finished job is waiting for its result.")
        try:
            client.attach(job.job, job.preview_points)
        except ProtocolError as e:
            raise SessionError(f"{e.message}. {e.hint}".strip()) from None
        job.download_failed, job.download = False, None

    def cancel(self, job_id: str | None = None) -> None:
        """Cancel ``job_id`` (default: the selected job), queued or running."""
        client = self._need_connection()
        job = self.jobs.get(job_id) if job_id else self.job
        if job is None or job.terminal:
            raise SessionError("No job is running.")
        try:
            client.cancel(job.job)
        except ProtocolError as e:
            raise SessionError(f"{e.message}. {e.hint}".strip()) from None
        job.message = "cancelling"

    def request_logs(self) -> None:
        client = self._need_connection()
        msg = GetLogs(since=0, max_lines=500)
        client.send(msg)
        self._logs_id = msg.id

    # --- polling ------------------------------------------------------------------------------

    def poll(self) -> list:
        """Everything that arrived, as updates (never blocks)."""
        if self.client is None:
            return []
        now = self.clock()
        out: list = []
        if self.state in ("connecting", "lost"):
            self._try_hello(now, out)
            if self.client is None:  # gave up: nobody answers
                return out
        try:
            events = self.client.poll_events()
        except ProtocolError as e:  # a send inside the client failed hard
            out.append(Notice("WARNING", e.message))
            events = []
        if events:
            self._last_heard = now
        for event in events:
            self._handle(event, out)
        if self.state == "connected":
            if now - self._last_heard > self.lost_after_s:
                self._lost(now, out)
            elif now - self._last_ping > self.ping_interval_s:
                self._last_ping = now
                try:
                    self.client.ping()
                except ProtocolError:
                    pass  # no connection at the moment: the silence will tell
            if now - self._last_list > LIST_INTERVAL_S:
                self.request_listing(now)
        self._advance()
        return out

    def _advance(self) -> None:
        """When the selected job is over, show the one that runs now (the queue moved on)."""
        if self.busy:
            return
        running = [j for j in self.jobs.values() if j.state == "running"]
        if running:
            self.selected = running[-1].job

    def request_listing(self, now: float | None = None) -> None:
        """Ask for the backend's active jobs (queue positions, this key's jobs, the others')."""
        self._last_list = self.clock() if now is None else now
        if self.client is None or not self.connected:
            return
        try:
            self._list_id = self.client.list_jobs(active=True)
        except ProtocolError:
            pass  # no connection at the moment

    def _on_listing(self, listing: Jobs) -> None:
        newer = self.server is not None and _minor(self.server.protocol) >= 4
        self.others_active = listing.others_active or 0
        for info in listing.jobs:
            view = self.jobs.get(info.job)
            if view is not None:
                if view.state == "queued" and info.state == "queued":
                    view.queue_position = info.queue_position
            elif newer and info.mine and info.state in ("queued", "running"):
                # this key's job that this session does not follow (another Blender, a lost
                # history): follow it too
                self.follow(info.job, info.prompt, parent=info.parent, mode=info.mode)

    def _try_hello(self, now: float, out: list) -> None:
        if self._hello_id is None:
            try:
                self._hello_id = self.client.start_handshake()
            except ProtocolError:
                pass  # not connected yet
        if now > self._deadline:
            if self.state == "lost":  # keep trying: the backend may come back
                self._rebuild(now)
                return
            self.close()
            self.unreachable = True
            self.status = f"No backend answers at {self.settings.endpoint}"
            out.append(
                Notice(
                    "ERROR",
                    f"No backend answered at {self.settings.endpoint} within "
                    f"{self._connect_timeout:.0f} s. Start it (Start Backend, or "
                    "`stabledreamer serve` in a terminal), or check the address and keys.",
                )
            )

    def _rebuild(self, now: float) -> None:
        """A fresh socket (a dead peer's queued messages are dropped) and a new hello. Downloads
        in progress are dropped too: the re-attach sends the manifest again."""
        if self.client is not None:
            self.client.close()
            self.client.downloads.clear()
            self.client.connect()
        self._hello_id = None
        self._deadline = now + self._connect_timeout

    def _lost(self, now: float, out: list) -> None:
        self.state = "lost"
        self._connect_timeout = CONNECT_TIMEOUT_S  # not a just-started backend's long wait
        self.status = f"Connection lost; reconnecting to {self.settings.endpoint}..."
        running = any(not j.terminal for j in self.jobs.values())
        out.append(
            Notice(
                "WARNING",
                "Lost the backend connection; reconnecting"
                + (" (the job keeps running on the backend)." if running else "."),
            )
        )
        self._rebuild(now)

    def _connected_status(self) -> str:
        h = self.server
        if h is None:
            return "Connected"
        queue = f", {h.queue_length} queued" if h.queue_length else ""
        return f"Connected: {h.software or 'backend'} on {h.device or '?'}{queue}"

    # --- events -------------------------------------------------------------------------------

    def _handle(self, event, out: list) -> None:
        if any(handler(event, out) for handler in self.handlers):
            return
        if isinstance(event, Hello):
            if event.re == self._hello_id and self.state in ("connecting", "lost"):
                self._on_hello(event, out)
            return
        if isinstance(event, Error) and event.re is not None and event.re == self._hello_id:
            self.close()
            self.status = f"Refused: {event.message}"
            out.append(Notice("ERROR", f"The backend refused the connection: {event.message}. "
                                       f"{event.hint}".strip()))  # fmt: skip
            return
        if isinstance(event, Pong):
            return
        if isinstance(event, Logs):
            if self._logs_id is None or event.re == self._logs_id:
                self.log_lines = list(event.lines)
                out.append(LogUpdate(self.log_lines))
            return
        if isinstance(event, Jobs):
            if event.re is not None and event.re == self._list_id:
                self._on_listing(event)
            return
        job = self.jobs.get(getattr(event, "job", None) or "")
        if job is None:
            return
        if isinstance(event, JobState):
            self._on_state(job, event, out)
        elif isinstance(event, Progress):
            job.stage, job.step, job.total = event.stage, event.step, event.total
            job.eta_s, job.elapsed_s = event.eta_s, event.elapsed_s
            job.num_gaussians = event.num_gaussians
        elif isinstance(event, Preview):
            try:
                gaussians = event.gaussians(log_scales=False)  # the viewport needs the scales only
            except ValueError as e:
                out.append(Notice("WARNING", f"Skipped a malformed preview: {e}"))
                return
            update = PreviewUpdate(job.job, gaussians, event.step, event.total_gaussians)
            self.latest_preview[job.job] = update
            out.append(update)
        elif isinstance(event, DebugImage):
            update = DebugUpdate(job.job, event.image, list(event.labels), event.stage, event.step)
            self.latest_debug[job.job] = update
            out.append(update)
        elif isinstance(event, Result):
            job.download = 0.0
        elif isinstance(event, ResultDownloaded):
            if job.imported or job.download == 1.0:
                return  # a second copy (a download restarted across a reconnect)
            job.download = 1.0
            out.append(ResultUpdate(job.job, event.files, dict(event.manifest.metrics)))
        elif isinstance(event, Error):
            self._on_error(job, event, out)

    def _on_hello(self, hello: Hello, out: list) -> None:
        try:
            self.client.finish_handshake(hello)
        except ProtocolError as e:
            self.close()
            self.status = f"Incompatible backend: {e.message}"
            out.append(Notice("ERROR", f"{e.message}. {e.hint}".strip()))
            return
        was_lost = self.state == "lost"
        self.server = hello
        self.state = "connected"
        self.unreachable = False
        self._last_heard = self._last_ping = self.clock()
        self.status = self._connected_status()
        for job in self.jobs.values():
            if job.terminal and (job.imported or job.state != "done"):
                continue
            if job.state == "done":
                job.download_failed, job.download = False, None
            self.client.attach(job.job, job.preview_points)  # after a reload or a lost link
        self.request_listing()  # this key's other jobs, queue positions, other clients
        out.append(Notice("INFO", ("Reconnected: " if was_lost else "") + self.status))

    def _on_state(self, job: JobView, msg: JobState, out: list) -> None:
        before = job.state
        job.acknowledged = True
        job.state, job.stage, job.step, job.total = msg.state, msg.stage, msg.step, msg.total
        job.queue_position, job.message = msg.queue_position, msg.message
        if msg.seed is not None:
            job.seed = msg.seed
        if msg.state == "running" and job.started is None:
            job.started = self.clock()
        elif msg.state == "done" and before == "running" and job.started is not None:
            job.ended = self.clock()
        out.append(JobUpdate(job))
        if before == msg.state:
            return
        if msg.terminal:
            self.latest_preview.pop(job.job, None)
            self.latest_debug.pop(job.job, None)
        what = f"{job.prompt[:40]!r}" if len(self.jobs) > 1 else "The job"
        if msg.state == "failed":
            out.append(Notice("ERROR", f"{what} failed: {msg.message or 'no reason given'}"))
        elif msg.state == "cancelled":
            out.append(Notice("INFO", f"{what} was cancelled."))

    def _on_error(self, job: JobView, err: Error, out: list) -> None:
        text = f"{err.message}. {err.hint}".strip() if err.hint else err.message
        if err.code in (ErrorCode.UNKNOWN_JOB, ErrorCode.FORBIDDEN) or not job.acknowledged:
            # A refused submit, a job the backend lost (restarted without its state), or one
            # that belongs to another client key (this add-on's key changed).
            job.state, job.message = "failed", err.message
            out.append(JobUpdate(job))
        elif job.state == "done" and not job.imported:
            job.download, job.download_failed = None, True  # a failed fetch: offer a retry
        out.append(Notice("ERROR", text))


def _minor(version: str) -> int:
    """The minor part of a "major.minor" protocol string (0 when unreadable)."""
    try:
        return int(version.split(".")[1])
    except (IndexError, ValueError):
        return 0
