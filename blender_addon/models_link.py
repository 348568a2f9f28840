"""The add-on's side of the backend's model sets, without bpy: what the Models panel shows and
the commands it sends (protocol 1.3, feature ``models``).

A :class:`ModelsLink` rides on a :class:`~.session.Session`: it registers a handler for the
events the session receives (``models``, ``download_state``, ``token_state`` and the refusals of
its own requests) and sends ``list_models``, ``download_models``, ``cancel_download`` and
``set_token`` through the session's client. It asks for the list after every handshake with a
backend that announces the feature, and again when a download ends.

The hub token passes through :meth:`ModelsLink.set_token` only: it is sent over the
authenticated (CURVE) link, refused here when the link has no CURVE, and not kept (the caller
clears the field it came from).
"""

from __future__ import annotations

from dataclasses import dataclass

from stabledreamer_protocol import (
    CancelDownload,
    DownloadModels,
    DownloadState,
    Error,
    ErrorCode,
    Hello,
    ListModels,
    Models,
    ModelSetInfo,
    ProtocolError,
    SetToken,
    TokenState,
)

FEATURE = "models"
BACKEND_DEFAULT = "backend"
"""The panel's choice "the backend's default set" (the submit then names none)."""


def human_bytes(n: int | float | None) -> str:
    """1.2 GB, 340 MB, 12 kB (decimal units, as the hub shows sizes)."""
    n = max(float(n or 0), 0.0)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass
class Blocked:
    """A Generate held back because its set is not on the backend."""

    set_id: str
    text: str
    """What is missing, for the panel."""


class ModelsLink:
    """Model sets of the session's backend. Main thread only, like the session."""

    def __init__(self, session) -> None:
        self.session = session
        self.listing: Models | None = None
        self.downloads: dict[str, DownloadState] = {}
        """The newest ``download_state`` of each set."""
        self.token: TokenState | None = None
        self.blocked: Blocked | None = None
        self.error = ""
        """The last refusal of a models request, for the panel."""
        self._pending: set[str] = set()
        session.handlers.append(self.handle)

    # --- state ----------------------------------------------------------------------------------

    @property
    def supported(self) -> bool:
        s = self.session
        return bool(s.connected and s.server is not None and FEATURE in s.server.features)

    def resolve(self, choice: str) -> str:
        """The set id a panel choice means (``backend``: the backend's default)."""
        if choice and choice != BACKEND_DEFAULT:
            return choice
        return self.listing.default if self.listing is not None else ""

    def info(self, set_id: str) -> ModelSetInfo | None:
        return self.listing.get(set_id) if self.listing is not None else None

    def downloading(self, set_id: str) -> DownloadState | None:
        d = self.downloads.get(set_id)
        return d if d is not None and d.state == "running" else None

    def token_text(self) -> str:
        t = self.token
        if t is None and self.listing is not None:
            t = TokenState(set=self.listing.token_set, source=self.listing.token_source)
        if t is None:
            return ""
        where = {"environment": "HF_TOKEN on the backend", "file": "stored on the backend",
                 "hf_login": "the backend's hf login"}.get(t.source, t.source)  # fmt: skip
        return f"Hub token: set ({where})" if t.set else "Hub token: none"

    def missing_text(self, set_id: str) -> str:
        info = self.info(set_id)
        if info is None:
            return ""
        names = ", ".join(m.title or m.repo_id for m in info.missing)
        return f"{info.title} needs {names} ({human_bytes(info.bytes_missing)} to download)"

    # --- commands -------------------------------------------------------------------------------

    def _send(self, msg) -> str:
        from .session import SessionError

        client = self.session._need_connection()
        if not self.supported:
            raise SessionError(
                "This backend has no model sets to manage (protocol 1.3, feature 'models'): "
                "update it."
            )
        try:
            client.send(msg)
        except ProtocolError as e:
            raise SessionError(f"{e.message}. {e.hint}".strip()) from None
        self._pending.add(msg.id)
        return msg.id

    def refresh(self) -> str:
        return self._send(ListModels())

    def download(self, set_id: str) -> str:
        self.error = ""
        self.downloads[set_id] = DownloadState(set=set_id, state="running", message="starting")
        return self._send(DownloadModels(set=set_id))

    def cancel(self, set_id: str) -> str:
        return self._send(CancelDownload(set=set_id))

    def set_token(self, token: str) -> str:
        """Send ``token`` (``""``: forget the stored one) to the backend over CURVE."""
        from .session import SessionError

        if not self.session.settings.use_curve:
            raise SessionError(
                "The hub token is only sent over an encrypted link: turn on Encrypt (CURVE) in "
                "the add-on's preferences, or set it on the backend machine "
                "(`stabledreamer models token set`)."
            )
        return self._send(SetToken(token=token))

    def check_generate(self, choice: str) -> Blocked | None:
        """Before a Generate: a :class:`Blocked` when the chosen set is known to be missing
        (and not downloading); None when it is there, or when this backend cannot say."""
        self.blocked = None
        if not self.supported or self.listing is None:
            return None
        set_id = self.resolve(choice)
        info = self.info(set_id)
        if info is None or info.present:
            return None
        self.blocked = Blocked(set_id, self.missing_text(set_id))
        return self.blocked

    # --- events ---------------------------------------------------------------------------------

    def handle(self, event, out: list) -> bool:
        """A session handler: True when the event was this link's (consumed)."""
        from .session import Notice

        if isinstance(event, Hello):
            if FEATURE in event.features:
                self.listing, self._pending = None, set()
                try:  # the session finishes the handshake with this same event
                    self.session.client.send(msg := ListModels())
                    self._pending.add(msg.id)
                except ProtocolError:
                    pass
            return False
        if isinstance(event, Models):
            self._pending.discard(event.re)
            self.listing = event
            for s in event.sets:  # a download this add-on did not start, or one that ended
                if s.download == "running" and s.id not in self.downloads:
                    self.downloads[s.id] = DownloadState(set=s.id, state="running")
            if self.blocked is not None and (i := self.info(self.blocked.set_id)) and i.present:
                self.blocked = None
            return True
        if isinstance(event, DownloadState):
            self._pending.discard(event.re)
            before = self.downloads.get(event.set)
            self.downloads[event.set] = event
            if event.finished and (before is None or not before.finished):
                self._on_end(event, out)
            return True
        if isinstance(event, TokenState):
            self._pending.discard(event.re)
            self.token = event
            out.append(Notice("INFO", self.token_text()))
            self.refresh_quietly()
            return True
        if isinstance(event, Error) and event.re in self._pending:
            self._pending.discard(event.re)
            self.error = event.message
            text = f"{event.message}. {event.hint}".strip() if event.hint else event.message
            out.append(Notice("ERROR", text))
            return True
        if isinstance(event, Error) and event.code == ErrorCode.MODELS_MISSING:
            set_id = _quoted_set(event.message) or self.resolve(BACKEND_DEFAULT)
            self.blocked = Blocked(set_id, event.message)
        return False

    def _on_end(self, state: DownloadState, out: list) -> None:
        from .session import Notice

        if state.state == "done":
            out.append(Notice("INFO", state.message or f"Model set {state.set} downloaded."))
        elif state.state == "cancelled":
            out.append(Notice("INFO", f"Download of model set {state.set} cancelled."))
        else:
            link = f" Accept the licence at {state.link}, then set a token." if state.link else ""
            self.error = state.message + link
            out.append(Notice("ERROR", f"Download of model set {state.set} failed: "
                                       f"{state.message}.{link}"))  # fmt: skip
        self.refresh_quietly()

    def refresh_quietly(self) -> None:
        if self.supported:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - SessionError: the next connect refreshes
                pass


def _quoted_set(text: str) -> str:
    """The set id a ``models_missing`` message names (``model set 'sd-only' is ...``)."""
    marker = "model set '"
    i = text.find(marker)
    if i < 0:
        return ""
    j = text.find("'", i + len(marker))
    return text[i + len(marker) : j] if j > 0 else ""


def of(session) -> ModelsLink:
    """The session's link (made on first use; ``runtime.connect`` makes it at once)."""
    link = getattr(session, "models", None)
    if link is None:
        link = session.models = ModelsLink(session)
    return link
