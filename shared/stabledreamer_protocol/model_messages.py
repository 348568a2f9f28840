"""The model messages (since 1.3, feature ``models``): the backend's model sets and their
licences, downloading a set with progress, cancelling it, and the hub token.

A client sends these commands only to a backend whose ``hello.features`` lists ``models`` (an
older one answers ``unknown_type``). Commands: ``list_models`` (answered by ``models``),
``download_models`` and ``cancel_download`` (answered by ``download_state``), ``set_token``
(answered by ``token_state``). The token travels only on a CURVE link; no message ever carries
it back. Docs: ``docs/protocol.md`` section 4, "Model sets".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .messages import COMMAND, EVENT, Fields, Message

DOWNLOAD_STATES = ("idle", "running", "done", "failed", "cancelled")
"""``idle``: no download of the set since the backend started; ``running``; then one of the
last three."""
DOWNLOAD_CODES = (
    "no_network", "gated", "disk_full", "cancelled", "unknown_model", "model_unavailable",
    "internal",
)  # fmt: skip
"""Why a download stopped (``download_state.code``): the hub cannot be reached; a gated model
whose licence this token has not accepted (``link``: the page where it is accepted); not enough
free disk; cancelled; the hub has no such repository or revision; another hub refusal; a bug."""
TOKEN_SOURCES = ("none", "environment", "file", "hf_login")
"""Where the backend's hub token comes from: nowhere, ``HF_TOKEN``, the backend's token file
(``set_token``, ``stabledreamer models token set``), huggingface_hub's own login."""
MAX_TOKEN_CHARS = 512
MAX_SETS = 32
MAX_MODELS = 16


@dataclass
class ModelInfo:
    """One model (a part a run loads) of a set, and whether the backend has it."""

    key: str
    title: str = ""
    repo_id: str = ""
    role: str = ""
    """``stage1``, ``stage2``, ``stage1+2``, ``text_encoder``."""
    present: bool = False
    source: str = "cache"
    """``cache`` (the backend's Hugging Face cache) or ``folder`` (a local folder given to
    ``serve``)."""
    bytes_present: int = 0
    bytes_expected: int = 0
    licence: str = ""
    gated: bool = False
    hub_page: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def parse(cls, f: Fields) -> ModelInfo:
        text = f.limits.max_text_chars
        return cls(
            key=f.string("key", required=True),
            title=f.string("title", max_chars=text),
            repo_id=f.string("repo_id", max_chars=text),
            role=f.string("role"),
            present=f.boolean("present"),
            source=f.string("source"),
            bytes_present=f.integer("bytes_present"),
            bytes_expected=f.integer("bytes_expected"),
            licence=f.string("licence", max_chars=text),
            gated=f.boolean("gated"),
            hub_page=f.string("hub_page", max_chars=text),
        )


@dataclass
class Licence:
    name: str
    url: str = ""


@dataclass
class ModelSetInfo:
    """One model set as ``models`` lists it: what it is, its licence, what is on the backend."""

    id: str
    title: str = ""
    summary: str = ""
    present: bool = False
    """Every model of the set is on the backend."""
    bytes_present: int = 0
    bytes_missing: int = 0
    """Still to download (an estimate until a download has listed the hub's files)."""
    download_bytes: int = 0
    """The whole set's download (estimate)."""
    memory_tier_gb: int = 0
    """The smallest GPU memory tier the set is meant for."""
    output_use: str = ""
    """One line: what you may do with what the set makes."""
    commercial: bool = False
    """Every licence of the set allows commercial use of the output."""
    gated: bool = False
    """A model of the set needs its licence accepted on its hub page (and a token)."""
    licences: list[Licence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    download: str = "idle"
    """The state of this set's download on the backend (``DOWNLOAD_STATES``)."""

    @property
    def missing(self) -> list[ModelInfo]:
        return [m for m in self.models if not m.present]

    @property
    def licence_line(self) -> str:
        names = ", ".join(lic.name for lic in self.licences)
        return f"{names}: {self.output_use}" if names else self.output_use

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["licences"] = [dict(lic.__dict__) for lic in self.licences]
        d["models"] = [m.to_dict() for m in self.models]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def parse(cls, f: Fields) -> ModelSetInfo:
        text = f.limits.max_text_chars
        licences = []
        for i, entry in enumerate(f.objects("licences", max_items=MAX_MODELS)):
            e = f.sub(f"licences[{i}]", entry)
            licences.append(Licence(e.string("name", required=True, max_chars=text),
                                    e.string("url", max_chars=text)))  # fmt: skip
        models = [ModelInfo.parse(f.sub(f"models[{i}]", entry))
                  for i, entry in enumerate(f.objects("models", max_items=MAX_MODELS))]  # fmt: skip
        return cls(
            id=f.string("id", required=True),
            title=f.string("title", max_chars=text),
            summary=f.string("summary", max_chars=text),
            present=f.boolean("present"),
            bytes_present=f.integer("bytes_present"),
            bytes_missing=f.integer("bytes_missing"),
            download_bytes=f.integer("download_bytes"),
            memory_tier_gb=f.integer("memory_tier_gb"),
            output_use=f.string("output_use", max_chars=text),
            commercial=f.boolean("commercial"),
            gated=f.boolean("gated"),
            licences=licences,
            notes=f.strings("notes", max_items=16, max_chars=text),
            models=models,
            download=f.string("download", "idle", choices=DOWNLOAD_STATES),
        )


# --- commands -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ListModels(Message):
    """Ask for the backend's model sets and their state; answered by ``models``."""

    TYPE = "list_models"
    DIRECTION = COMMAND


@dataclass(kw_only=True)
class DownloadModels(Message):
    """Download the models of set ``set`` that the backend lacks. Answered by
    ``download_state`` (``running``, or ``done`` at once when nothing is missing); the sender
    then gets the set's ``download_state`` events until the download ends. Asking while the set
    downloads joins that download (one download per set at a time)."""

    TYPE = "download_models"
    DIRECTION = COMMAND
    set: str = ""

    def body(self):
        return {"set": self.set}

    @classmethod
    def parse(cls, f, arrays):
        return dict(set=f.string("set", required=True))


@dataclass(kw_only=True)
class CancelDownload(Message):
    """Stop the download of set ``set``; answered by ``download_state`` (the final
    ``cancelled`` follows as an event once the transfer has stopped). Harmless when none runs."""

    TYPE = "cancel_download"
    DIRECTION = COMMAND
    set: str = ""

    def body(self):
        return {"set": self.set}

    @classmethod
    def parse(cls, f, arrays):
        return dict(set=f.string("set", required=True))


@dataclass(kw_only=True)
class SetToken(Message):
    """Give the backend a hub token (``""``: forget the stored one). Only over CURVE (else
    ``curve_required``) and only from an operator key (else ``forbidden``). The backend stores it
    owner-only and never logs or returns it; answered by ``token_state``."""

    TYPE = "set_token"
    DIRECTION = COMMAND
    token: str = field(default="", repr=False)

    def body(self):
        return {"token": self.token}

    @classmethod
    def parse(cls, f, arrays):
        return dict(token=f.string("token", required=True, max_chars=MAX_TOKEN_CHARS))


# --- events -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Models(Message):
    """Answer to ``list_models``: every set (``ModelSetInfo``), the set a ``submit`` without
    ``models`` uses (``default``), and whether a hub token is set and where from (never the
    token)."""

    TYPE = "models"
    DIRECTION = EVENT
    sets: list[ModelSetInfo] = field(default_factory=list)
    default: str = ""
    token_set: bool = False
    token_source: str = "none"

    def body(self):
        return {
            "sets": [s.to_dict() for s in self.sets],
            "default": self.default,
            "token_set": self.token_set,
            "token_source": self.token_source,
        }

    @classmethod
    def parse(cls, f, arrays):
        sets = [ModelSetInfo.parse(f.sub(f"sets[{i}]", entry))
                for i, entry in enumerate(f.objects("sets", max_items=MAX_SETS))]  # fmt: skip
        return dict(
            sets=sets,
            default=f.string("default"),
            token_set=f.boolean("token_set"),
            token_source=f.string("token_source", "none", choices=TOKEN_SOURCES),
        )

    def get(self, set_id: str) -> ModelSetInfo | None:
        return next((s for s in self.sets if s.id == set_id), None)


@dataclass(kw_only=True)
class DownloadState(Message):
    """A set's download: its answer to ``download_models``/``cancel_download``, its progress
    while ``running`` (at most a few a second; a client may show only the latest) and its end
    (``done``, ``failed``, ``cancelled``; never dropped). ``code``, ``message`` and ``link`` say
    why it stopped."""

    TYPE = "download_state"
    DIRECTION = EVENT
    set: str = ""
    state: str = "idle"
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    rate_bps: float | None = None
    """Bytes per second over the last seconds (null until measured)."""
    eta_s: float | None = None
    elapsed_s: float | None = None
    model: str = ""
    """The hub repository being fetched now."""
    code: str = ""
    """Why it stopped (``DOWNLOAD_CODES``), "" while running or when done."""
    message: str = ""
    """One line for people: what happened and what to do."""
    link: str = ""
    """A gated model: the hub page where its licence is accepted."""

    def body(self):
        return {
            "set": self.set,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "rate_bps": self.rate_bps,
            "eta_s": self.eta_s,
            "elapsed_s": self.elapsed_s,
            "model": self.model,
            "code": self.code,
            "message": self.message,
            "link": self.link,
        }

    @classmethod
    def parse(cls, f, arrays):
        text = f.limits.max_text_chars
        return dict(
            set=f.string("set", required=True),
            state=f.string("state", required=True, choices=DOWNLOAD_STATES),
            bytes_done=f.integer("bytes_done"),
            bytes_total=f.integer("bytes_total"),
            files_done=f.integer("files_done"),
            files_total=f.integer("files_total"),
            rate_bps=f.number("rate_bps"),
            eta_s=f.number("eta_s"),
            elapsed_s=f.number("elapsed_s"),
            model=f.string("model", max_chars=text),
            code=f.string("code"),
            message=f.string("message", max_chars=text),
            link=f.string("link", max_chars=text),
        )

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return min(self.bytes_done / self.bytes_total, 1.0) if self.bytes_total else 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass(kw_only=True)
class TokenState(Message):
    """Answer to ``set_token``: whether the backend has a hub token and where it comes from
    (``TOKEN_SOURCES``). Never the token."""

    TYPE = "token_state"
    DIRECTION = EVENT
    set: bool = False
    source: str = "none"

    def body(self):
        return {"set": self.set, "source": self.source}

    @classmethod
    def parse(cls, f, arrays):
        return dict(set=f.boolean("set"), source=f.string("source", "none", choices=TOKEN_SOURCES))


MODEL_MESSAGE_TYPES: tuple[type[Message], ...] = (
    ListModels,
    DownloadModels,
    CancelDownload,
    SetToken,
    Models,
    DownloadState,
    TokenState,
)
