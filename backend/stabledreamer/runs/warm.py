"""Warm models: the guidance models a long-lived process (a service worker) keeps between runs.

Loading the diffusion guidances (UNet, VAE, text encoder) is most of a text job's start; an
artist iterating prompts runs the same models again and again. :class:`GuidanceCache` keeps each
loaded guidance keyed by what its load depends on (the guidance, the model source, placement,
precision, weight variant, device: ``cache_key``), and hands it to the next run that needs the
same, with that run's prompt and per-step settings (the prompt is encoded again only when it or
the negative prompt changed; the text encoder stays loaded, ``keep_text_encoder``).

Eviction: a run that needs a model the cache does not hold drops the entries it does not use
(a different model set replaces the old one; a run that needs no model, a reconstruction, leaves
them); ``trim`` drops everything when free memory falls under ``WarmConfig``'s floor (checked
after every run). On a GPU only the guidance in use is on the device: the others are parked in
CPU memory (``DiffusionGuidance.park``). After a failure the owner drops the whole cache
(``clear``; the service's worker process simply ends and a fresh one takes its place).

The example prior is not cached (its bank is a file read, not a model load).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import RunConfig, StageConfig

log = logging.getLogger(__name__)

CACHED = {"deepfloyd_if": "deepfloyd_if", "stable_diffusion": "stable_diffusion"}
"""Guidance name -> its config section in ``RunConfig``."""
PER_RUN_FIELDS = frozenset(
    {"negative_prompt", "view_prompts", "max_text_length", "guidance_scale", "resolution",
     "sample_latent"}
)  # fmt: skip
"""Guidance settings a cached guidance takes from each run (prompt side or per step); the
others decide what is loaded and how, and are part of the key."""


@dataclass
class WarmConfig:
    min_free_host_fraction: float = 0.10
    """Drop the cache when less than this fraction of the machine's memory is available."""
    min_free_gpu_fraction: float = 0.10
    """... or of the GPU's memory is free (CUDA)."""


def cache_key(cfg: RunConfig, stage: StageConfig, device: torch.device) -> tuple | None:
    """What a stage's guidance load depends on (None: not cached)."""
    section = CACHED.get(stage.guidance)
    if section is None:
        return None
    gcfg = getattr(cfg, section)
    fixed = tuple(
        (f.name, repr(getattr(gcfg, f.name)))
        for f in dataclasses.fields(gcfg)
        if f.name not in PER_RUN_FIELDS
    )
    return (stage.guidance, str(torch.device(device)), fixed)


class GuidanceCache:
    def __init__(self, cfg: WarmConfig | None = None) -> None:
        self.cfg = cfg or WarmConfig()
        self.entries: dict[tuple, Any] = {}
        self.loads = 0
        """Guidances built (each a load of its models) over this cache's life."""
        self.hits = 0
        """Guidances handed out again without a load."""

    def names(self) -> list[str]:
        return [k[0] for k in self.entries]

    def get(
        self, cfg: RunConfig, stage: StageConfig, device: torch.device, build: Callable[[], Any]
    ) -> Any:
        """The stage's guidance: the cached one with this run's prompt and settings, or
        ``build()`` (which must build it with ``keep_text_encoder=True``), then kept."""
        key = cache_key(cfg, stage, device)
        if key is None:
            return build()
        for other, g in self.entries.items():
            if other != key:
                g.park()  # the GPU is this stage's
        g = self.entries.get(key)
        if g is not None:
            self.hits += 1
            g.cfg = getattr(cfg, CACHED[stage.guidance])
            g.unpark()
            g.set_prompt(cfg.prompt)
            return g
        needed = {cache_key(cfg, s, device) for s in cfg.stages}
        for other in [k for k in self.entries if k not in needed]:
            log.info("dropping the cached %s guidance (a different model set)", other[0])
            del self.entries[other]
        _release()
        g = build()
        self.loads += 1
        self.entries[key] = g
        return g

    def clear(self) -> None:
        self.entries.clear()
        _release()

    def trim(self) -> bool:
        """Drop everything when memory is short (``WarmConfig``); True when it did."""
        if not self.entries:
            return False
        short = _host_short(self.cfg.min_free_host_fraction)
        if not short and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            short = free < self.cfg.min_free_gpu_fraction * total
        if short:
            log.info("memory is short: dropping %d cached guidance model(s)", len(self.entries))
            self.clear()
        return short


def _host_short(fraction: float) -> bool:
    try:
        import psutil
    except ImportError:  # then only the GPU's memory is watched
        return False
    vm = psutil.virtual_memory()
    return vm.available < fraction * vm.total


def _release() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
