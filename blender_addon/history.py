"""Run history, kept in a JSON file in the add-on's user folder (it outlives the .blend file).

Each entry records what was asked (prompt, negative, preset, seed, the start-from-selection
placement), where (the backend address), what came of it (state, message, metrics) and where
its downloaded result lives (``results/<job>/``). The file is rewritten atomically; an
unreadable file is set aside (``history.json.bad``) rather than lost or fatal.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MAX_ENTRIES = 200


@dataclass
class Entry:
    job: str
    prompt: str
    negative: str = ""
    preset: str = ""
    seed: int | None = None
    endpoint: str = ""
    created: float = field(default_factory=time.time)
    state: str = "queued"
    message: str = ""
    result_dir: str = ""
    """Folder of the downloaded result files ("" until downloaded)."""
    preview_points: int | None = None
    """Gaussians per preview the submit asked for (a re-attach asks the same)."""
    placement: list[float] | None = None
    """``[x, y, z, scale]``: the backend's unit frame to the scene (start from selection)."""
    source_object: str = ""
    """The blockout it started from (hidden once the result is imported in its place)."""
    object_name: str = ""
    """The imported object's name (renamed objects are simply not found again)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str = ""
    """The run this one refines or continues ("" for a fresh run)."""
    mode: str = ""
    """``refine`` or ``continue`` with a parent."""
    steps: int = 0
    """continue: the steps added; refine: the rerun stage's steps (0: the parent's)."""
    group: str = ""
    """Variations of one prompt share a group id (one collection, side by side)."""
    models: str = ""
    """The model set that made it (the backend's answer once done; what was asked before)."""

    @property
    def active(self) -> bool:
        """Still to follow: running, or finished with its result not downloaded yet."""
        return self.state in ("queued", "running") or (self.state == "done" and not self.result_dir)

    def label(self) -> str:
        when = time.strftime("%m-%d %H:%M", time.localtime(self.created))
        what = {"refine": "refined: ", "continue": f"+{self.steps} steps: "}.get(self.mode, "")
        seed = f" (seed {self.seed})" if self.group and self.seed is not None else ""
        models = self.metrics.get("model_set") or self.models
        label = f"{when}  {what}{self.prompt[:48]}{seed}"
        return label + (f"  [{models}]" if models else "")

    @property
    def licence(self) -> str:
        """What the licence of the set that made it allows ("" when not known)."""
        return str(self.metrics.get("licence", ""))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class History:
    """Entries, newest first, saved on every change."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: list[Entry] = []
        self._removed: set[str] = set()
        self.load()

    def load(self) -> None:
        self.entries = self._read()

    def _read(self) -> list[Entry]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [Entry.from_dict(d) for d in data["entries"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            bad = self.path.with_suffix(".json.bad")
            print(f"StableDreamer: unreadable history {self.path} ({e}); moved to {bad}")
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            return []

    def save(self) -> None:
        """Write the entries, keeping runs another Blender added to the file meanwhile."""
        mine = {e.job for e in self.entries}
        others = [e for e in self._read() if e.job not in mine and e.job not in self._removed]
        if others:
            self.entries = sorted(self.entries + others, key=lambda e: -e.created)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"version": 1, "entries": [asdict(e) for e in self.entries[:MAX_ENTRIES]]}
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def add(self, entry: Entry) -> Entry:
        self.entries.insert(0, entry)
        self.save()
        return entry

    def get(self, job: str) -> Entry | None:
        return next((e for e in self.entries if e.job == job), None)

    def update(self, job: str, **changes: Any) -> Entry | None:
        entry = self.get(job)
        if entry is None:
            return None
        for k, v in changes.items():
            setattr(entry, k, v)
        self.save()
        return entry

    def active(self) -> Entry | None:
        """The newest entry still queued or running (what to re-attach after a reload)."""
        return next((e for e in self.entries if e.active), None)

    def remove(self, job: str) -> None:
        self._removed.add(job)
        self.entries = [e for e in self.entries if e.job != job]
        self.save()
