"""The warm-model cache of a long-lived worker: what its key holds, reuse with the new prompt,
eviction on a different model set and on clear (fake guidances: no model is loaded)."""

from __future__ import annotations

import torch

from stabledreamer.presets import get_preset
from stabledreamer.runs.warm import GuidanceCache, cache_key


class FakeGuidance:
    def __init__(self, cfg, prompt: str) -> None:
        self.cfg, self.prompt, self.parked = cfg, prompt, False

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt

    def park(self) -> None:
        self.parked = True

    def unpark(self) -> None:
        self.parked = False


def text_cfg(prompt="a chair", **sd):
    cfg = get_preset("preview")
    cfg.prompt = prompt
    for k, v in sd.items():
        setattr(cfg.stable_diffusion, k, v)
    return cfg


CPU = torch.device("cpu")


def test_the_key_is_what_the_load_depends_on():
    a = text_cfg()
    stage = a.stages[1]  # stable_diffusion
    same = text_cfg("another prompt", negative_prompt="blurry", guidance_scale=7.5, resolution=256)
    assert cache_key(a, stage, CPU) == cache_key(same, stage, CPU)
    for change in ({"model": "other/sd"}, {"half_precision": False}, {"cpu_offload": True},
                   {"variant": None}):  # fmt: skip
        assert cache_key(text_cfg(**change), stage, CPU) != cache_key(a, stage, CPU), change
    assert cache_key(a, stage, CPU) != cache_key(a, stage, torch.device("cuda", 1))
    a.stages[0].guidance = "example_prior"
    assert cache_key(a, a.stages[0], CPU) is None  # not cached


def test_reuse_sets_the_runs_prompt_and_settings_and_loads_once():
    cache = GuidanceCache()
    built = []

    def build_for(cfg, stage):
        def build():
            g = FakeGuidance(cfg.stable_diffusion, cfg.prompt)
            built.append(g)
            return g

        return lambda: cache.get(cfg, stage, CPU, build)

    first = text_cfg("a chair")
    g1 = build_for(first, first.stages[1])()
    second = text_cfg("a vase", guidance_scale=12.0)
    g2 = build_for(second, second.stages[1])()
    assert g2 is g1 and len(built) == 1 and (cache.loads, cache.hits) == (1, 1)
    assert g2.prompt == "a vase" and g2.cfg.guidance_scale == 12.0
    # Another stage's guidance parks this one while it is in use.
    g_if = build_for(second, second.stages[0])()
    assert g_if is not g1 and g1.parked and cache.loads == 2
    assert build_for(second, second.stages[1])() is g1 and not g1.parked
    # A run that needs a different SD drops the models it does not use.
    other = text_cfg("a lamp", model="other/sd")
    other.stages[0].guidance = "stable_diffusion"
    g3 = build_for(other, other.stages[1])()
    assert g3 is not g1 and cache.names() == ["stable_diffusion"] and cache.loads == 3
    cache.clear()
    assert cache.entries == {} and cache.loads == 3


def test_a_kept_text_encoder_encodes_as_a_fresh_load_does(tiny_models):
    """The warm path (text encoder kept, prompts switched, an earlier prompt recalled) gives the
    very embeddings a fresh guidance computes: warm jobs match cold ones bit for bit."""
    from stabledreamer.guidance.stable_diffusion import (
        StableDiffusionConfig,
        StableDiffusionGuidance,
    )

    cfg = StableDiffusionConfig(model=str(tiny_models / "sd"), variant=None)
    warm = StableDiffusionGuidance("a red chair", cfg, CPU, keep_text_encoder=True)
    first = warm.embeddings
    warm.set_prompt("a blue vase")
    fresh = StableDiffusionGuidance("a blue vase", cfg, CPU)
    assert torch.equal(warm.embeddings.cond, fresh.embeddings.cond)
    assert torch.equal(warm.embeddings.uncond, fresh.embeddings.uncond)
    assert warm._text is not None and fresh._text is None  # kept / freed
    warm.set_prompt("a red chair")
    assert warm.embeddings is first  # remembered, not encoded again
    warm.cfg = StableDiffusionConfig(model=cfg.model, variant=None, negative_prompt="blurry")
    warm.set_prompt("a red chair")  # another negative prompt: encoded again
    assert warm.embeddings is not first and warm.embeddings.negative_prompt == "blurry"


def test_memory_pressure_drops_the_cache(monkeypatch):
    import stabledreamer.runs.warm as warm

    cache = GuidanceCache()
    cfg = text_cfg()
    cache.get(cfg, cfg.stages[1], CPU, lambda: FakeGuidance(cfg.stable_diffusion, cfg.prompt))
    monkeypatch.setattr(warm, "_host_short", lambda fraction: False)
    assert not cache.trim() and cache.names() == ["stable_diffusion"]
    monkeypatch.setattr(warm, "_host_short", lambda fraction: fraction == 0.10)
    assert cache.trim() and cache.entries == {}


def test_a_warm_cpu_worker_encodes_a_new_prompts_views_as_cameras_need_them(tiny_models):
    """On the CPU a kept text encoder encodes a new prompt's view prompts lazily, each alone:
    the negative prompt is remembered from the first prompt, a camera's ``prepare`` encodes
    only its view, and the embeddings still equal a fresh guidance's bit for bit."""
    from stabledreamer.cameras import orbit_cameras
    from stabledreamer.guidance.base import GuidanceContext
    from stabledreamer.guidance.stable_diffusion import (
        StableDiffusionConfig,
        StableDiffusionGuidance,
    )

    cfg = StableDiffusionConfig(model=str(tiny_models / "sd"), variant=None)
    warm = StableDiffusionGuidance("a red chair", cfg, CPU, keep_text_encoder=True)
    encoded: list[list[str]] = []
    real = warm._encode_texts

    def counting(tokenizer, encoder, texts):
        encoded.append(list(texts))
        return real(tokenizer, encoder, texts)

    warm._encode_texts = counting
    warm.set_prompt("a blue vase")
    assert encoded == [] and warm.embeddings.encoded() == []  # negative remembered, views lazy
    side = orbit_cameras([90.0, 100.0], 20.0, 2.5, 49.0, 8, 8)
    warm.prepare(GuidanceContext(cameras=side, background=torch.ones(2, 3), step=0))
    assert encoded == [[warm.embeddings.texts[1]]] and warm.embeddings.encoded() == [1]
    warm.prepare(GuidanceContext(cameras=side, background=torch.ones(2, 3), step=1))
    assert len(encoded) == 1  # nothing new
    fresh = StableDiffusionGuidance("a blue vase", cfg, CPU)
    cond, uncond = warm.embeddings.for_cameras(side)
    assert torch.equal(cond, fresh.embeddings.cond[[1, 1]])
    assert torch.equal(uncond[0], fresh.embeddings.uncond[0])
    assert torch.equal(warm.embeddings.cond, fresh.embeddings.cond)  # the other three now
    assert sorted(len(e) for e in encoded) == [1, 1, 1, 1]
