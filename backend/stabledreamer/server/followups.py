"""Refine and continue through the service: a ``submit`` with ``parent`` and ``mode`` (protocol
1.3) becomes a new text job that remembers its parent (``runs.followup`` does the run).

The service resolves the parent itself, never from a client-given path: the parent must be a
job this client may see, a text job, ``done``, with its run files. Its config and final
checkpoint are linked into the new job's folder (``parent/``, a run folder of its own), so the
follow-up runs even when the parent is deleted meanwhile (by a client or the retention policy)
and resumes like any job when interrupted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stabledreamer_protocol import ErrorCode, ProtocolError, Submit

from .jobs import ConfigError, JobRecord, JobStore

if TYPE_CHECKING:
    from .submit import Prepared

PARENT_DIR = "parent"
PARENT_FILES = (
    "config.json",
    "checkpoints/last.pt",
    "checkpoints/last.json",
    "checkpoints/previous.pt",
    "checkpoints/previous.json",
)
"""What of the parent's run folder a follow-up needs (those that exist are linked)."""


@dataclass(frozen=True)
class ParentRef:
    record: JobRecord
    files: dict[str, Path]
    """Name in the new job's folder -> the parent's file."""


def resolve_parent(store: JobStore, access, peer, msg: Submit) -> ParentRef | None:
    """The parent a ``submit`` names (None without one), or the refusal that says why."""
    if msg.parent is None:
        return None
    what = f"{msg.mode} job {msg.parent!r}"
    rec = store.get(msg.parent)
    if rec is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_PARENT, f"cannot {what}: there is no such job on this backend"
        )
    if not access.may(peer, rec):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"cannot {what}: it belongs to another client key")
    if rec.kind != "generate":
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"cannot {what}: it is a {rec.kind} job; only text-to-3D jobs can be refined or "
            "continued",
        )
    if rec.state != "done":
        raise ProtocolError(
            ErrorCode.PARENT_NOT_DONE, f"cannot {what}: it is {rec.state}, not done"
        )
    run = store.run_dir(rec.job)
    files = {f"{PARENT_DIR}/{name}": run / name for name in PARENT_FILES}
    files = {k: v for k, v in files.items() if v.is_file()}
    if f"{PARENT_DIR}/config.json" not in files or not any(k.endswith(".pt") for k in files):
        raise ProtocolError(
            ErrorCode.UNKNOWN_PARENT, f"cannot {what}: its run files are gone from the backend"
        )
    return ParentRef(rec, files)


@dataclass(frozen=True)
class FollowUpJob:
    """What a follow-up's record holds beyond a text job's."""

    parent: str
    mode: str
    steps: int
    prompt: str
    negative: str

    def record_fields(self) -> dict:
        p = self.prompt
        return dict(prompt=p, negative=self.negative, target_name=p[:80], parent=self.parent,
                    mode=self.mode, steps=self.steps)  # fmt: skip


def followup_prepared(msg: Submit, parent: ParentRef, models: dict[str, str]) -> Prepared:
    """The checked follow-up (``SubmitCheck.prepare``): the parent files to link, its config
    checked now (from the parent's config, the client's overrides and the service's models) so
    the submitter gets a clear reply."""
    from ..runs.folder import load_run_config
    from ..runs.followup import FollowUpError
    from .submit import Prepared  # noqa: F811 (submit imports this module)

    p = parent.record
    refine = msg.mode == "refine"
    prompt = (msg.prompt.strip() or p.prompt) if refine else p.prompt
    negative = msg.negative if refine else p.negative
    seed = msg.seed if msg.seed is not None else random.randrange(2**31)
    try:
        parent_cfg = load_run_config(parent.files[f"{PARENT_DIR}/config.json"].parent)
        cfg = followup_config_of(msg.mode, parent_cfg, prompt, negative, msg.steps or 0, seed,
                                 msg.overrides, models)  # fmt: skip
    except (ConfigError, FollowUpError) as e:
        raise ProtocolError(e.code, str(e)) from None
    except (OSError, ValueError) as e:  # an unreadable config.json
        raise ProtocolError(
            ErrorCode.UNKNOWN_PARENT, f"the parent job's config cannot be read ({e})"
        ) from None
    missing = None
    if cfg.models:  # the parent's model set: its last stage's models must be here
        from ..models import ModelsMissingError
        from ..models.store import require_run_models

        try:
            require_run_models(cfg)
        except ModelsMissingError as e:
            missing = e
    followup = FollowUpJob(p.job, msg.mode, msg.steps or 0, prompt, negative)
    return Prepared(
        kind="generate", preset=p.preset, seed=seed, files=dict(parent.files), target_file="",
        init_file="", model_set=p.model_set, models_missing=missing, followup=followup,
    )  # fmt: skip


def followup_config_of(mode, parent_cfg, prompt, negative, steps, seed, overrides, models):
    """The follow-up's ``RunConfig`` as the worker will build it (``runs.followup``)."""
    from ..runs.followup import FollowUp, followup_config
    from .jobs import FORBIDDEN_OVERRIDES

    f = FollowUp(mode, Path(), prompt=prompt, negative=negative, steps=steps, seed=seed)
    return followup_config(
        parent_cfg, f, overrides=overrides, forbidden=FORBIDDEN_OVERRIDES, fixed=model_keys(models)
    )


def model_keys(models: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for key, section in (("if", "deepfloyd_if"), ("sd", "stable_diffusion")):
        if models and models.get(key):
            out[f"{section}.model"] = models[key]
    return out


def prepare_job_followup(spec, run_dir: Path) -> bool:
    """In the worker, before a follow-up job's first step: its run folder from the parent's
    snapshot in the job folder (config, ``followup.json``, the first checkpoint). A folder left
    by a worker killed before that checkpoint is started again. Returns whether it prepared the
    folder now (False: it was prepared before and the job resumes)."""
    import shutil

    from ..runs.checkpoint import has_checkpoint
    from ..runs.followup import FollowUp, prepare_followup
    from .jobs import FORBIDDEN_OVERRIDES

    if (run_dir / "config.json").is_file() and has_checkpoint(run_dir):
        return False  # prepared before: the job resumes from its newest checkpoint
    if run_dir.exists():
        shutil.rmtree(run_dir)
    f = FollowUp(
        spec.mode,
        Path(spec.job_dir) / PARENT_DIR,
        prompt=spec.prompt,
        negative=spec.negative if spec.mode == "refine" else None,
        steps=spec.steps,
        seed=spec.seed,
        parent_name=spec.parent,
    )
    prepare_followup(
        f, run_dir, overrides=spec.overrides, forbidden=FORBIDDEN_OVERRIDES,
        fixed=model_keys(spec.models),
    )  # fmt: skip
    return True
