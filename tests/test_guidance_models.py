"""Real-model guidances (DeepFloyd IF, Stable Diffusion) on tiny random models, offline.

The tiny pipelines are built once per module by the ``tiny-models`` CLI, saved as safetensors, and
loaded back through the real ``from_pretrained`` code path with HF_HUB_OFFLINE=1.
"""

import gc
import logging
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, T5EncoderModel

from stabledreamer.cameras import orbit_cameras
from stabledreamer.cli import main
from stabledreamer.guidance import loading as models
from stabledreamer.guidance.base import Guidance, GuidanceContext, GuidanceError
from stabledreamer.guidance.deepfloyd_if import DeepFloydIFConfig, DeepFloydIFGuidance
from stabledreamer.guidance.prompts import ViewPromptConfig, view_names, view_prompts
from stabledreamer.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer.optim.sds import NoiseConfig, sds_loss

AZ = [0.0, 90.0, 180.0, 270.0]
EL = [10.0, 10.0, 10.0, 75.0]  # front, side, back, overhead


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-models")
    assert main(["tiny-models", str(d)]) == 0
    for sub in ("if/unet", "if/text_encoder", "sd/unet", "sd/vae", "sd/text_encoder"):
        assert list((d / sub).glob("*.safetensors")), sub
    return d


@pytest.fixture(scope="module")
def if_guidance(tiny_dir):
    return DeepFloydIFGuidance("a red chair", DeepFloydIFConfig(model=str(tiny_dir / "if")))


@pytest.fixture(scope="module")
def sd_guidance(tiny_dir):
    cfg = StableDiffusionConfig(model=str(tiny_dir / "sd"), resolution=64)
    return StableDiffusionGuidance("a red chair", cfg)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _ctx() -> GuidanceContext:
    cams = orbit_cameras(AZ, EL, 2.5, 49.0, 32, 32)
    return GuidanceContext(cams, torch.ones(4, 3), 0)


# -- view-dependent prompts --------------------------------------------------------------------


def test_view_suffix_by_azimuth_and_elevation():
    cfg = ViewPromptConfig()
    az = torch.tensor([0.0, 44, -40, 359, 46, 90, 270, 136, 180, -170, 0, 180])
    el = torch.tensor([0.0] * 10 + [61.0, 80.0])
    assert view_names(cfg, az, el) == [
        *["front"] * 4,
        *["side"] * 3,
        *["back"] * 3,
        *["overhead"] * 2,
    ]
    assert view_prompts("a cat", cfg, torch.tensor([0.0, 180.0]), torch.tensor([0.0, 0.0])) == [
        "a cat, front view",
        "a cat, back view",
    ]
    off = ViewPromptConfig(enabled=False)
    assert view_prompts("a cat", off, torch.tensor([90.0]), torch.tensor([0.0])) == ["a cat"]
    narrow = ViewPromptConfig(front_threshold_deg=20.0, overhead_threshold_deg=30.0)
    assert view_names(narrow, torch.tensor([30.0, 0.0]), torch.tensor([0.0, 40.0])) == [
        "side",
        "overhead",
    ]
    with pytest.raises(ValueError):
        ViewPromptConfig(front_threshold_deg=100.0, back_threshold_deg=100.0)


def test_embeddings_follow_the_camera_view(if_guidance, sd_guidance):
    for g in (if_guidance, sd_guidance):
        assert isinstance(g, Guidance)
        emb = g.embeddings
        assert emb.texts[0] == "a red chair, front view" and emb.cond.shape[0] == 4
        cond, uncond = emb.for_cameras(_ctx().cameras)
        assert torch.equal(cond, emb.cond)  # cameras are front, side, back, overhead
        assert torch.equal(uncond[3], emb.uncond[0])
        assert not torch.equal(emb.cond[0], emb.cond[2])  # suffixes change the embedding
        assert not hasattr(g, "text_encoder")  # freed after encoding
    gc.collect()
    encoders = (T5EncoderModel, CLIPTextModel)
    alive = [o for o in gc.get_objects() if type(o) in encoders]
    assert not alive


# -- SDS through the real guidances --------------------------------------------------------------


@pytest.mark.parametrize("which", ["if", "sd"])
def test_sds_through_tiny_model(which, if_guidance, sd_guidance):
    g = if_guidance if which == "if" else sd_guidance
    assert g.num_train_timesteps == 1000
    a, s = g.alphas_sigmas(torch.tensor([0, 500, 999]))
    assert torch.allclose(a**2 + s**2, torch.ones(3), atol=1e-5) and (a[:-1] > a[1:]).all()
    rgb = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([50, 300, 600, 900])
    out = sds_loss(g, rgb, _ctx(), t, NoiseConfig(), torch.Generator().manual_seed(1))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    shape = (4, 3, 64, 64) if which == "if" else (4, 4, 8, 8)  # SD: 64 px / 8 (VAE)
    assert out.x.shape == out.x0_hat.shape == out.grad.shape == shape
    img = g.decode(out.x0_hat)
    assert img.shape == (4, 64, 64, 3)
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


def test_guidance_scale_applies_cfg(if_guidance):
    x_t = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500] * 4)
    scale = if_guidance.cfg.guidance_scale
    try:
        eps = {}
        for s in (0.0, 1.0, 2.0):
            if_guidance.cfg.guidance_scale = s
            eps[s] = if_guidance.predict_noise(x_t, t, _ctx())
    finally:
        if_guidance.cfg.guidance_scale = scale
    assert eps[1.0].shape == x_t.shape  # the learned-variance channels are dropped
    assert torch.allclose(eps[2.0], 2 * eps[1.0] - eps[0.0], atol=1e-4)  # linear in s
    assert not torch.allclose(eps[0.0], eps[1.0])


# -- loading errors ------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(GuidanceError, match="does not exist"):
        DeepFloydIFGuidance("x", DeepFloydIFConfig(model=str(tmp_path / "nope")))
    with pytest.raises(GuidanceError, match="has no scheduler/"):
        StableDiffusionGuidance("x", StableDiffusionConfig(model=str(tmp_path)))


def test_hub_id_while_offline():
    with pytest.raises(GuidanceError, match="HF_HUB_OFFLINE=1.*hf download"):
        StableDiffusionGuidance("x", StableDiffusionConfig(model="nobody/no-such-model"))
    with pytest.raises(GuidanceError, match="owner/name"):
        models.resolve_source("just-a-name")


def test_gated_repo_says_what_to_do(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    class Gated(GatedRepoError):
        def __init__(self, msg):
            Exception.__init__(self, msg)

    class Loader:
        @classmethod
        def from_pretrained(cls, *a, **k):
            raise OSError("cannot access DeepFloyd/IF-I-XL-v1.0") from Gated("403 restricted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(GuidanceError, match="accept its licence.*HF_TOKEN"):
        models.load_component(Loader, "DeepFloyd/IF-I-XL-v1.0", "unet")


def test_deepfloyd_notice_once(monkeypatch, caplog):
    monkeypatch.setattr(models, "_notice_shown", False)
    with caplog.at_level(logging.WARNING, logger=models.__name__):
        assert models.deepfloyd_notice() is True
        assert models.deepfloyd_notice() is False
    assert sum("non-commercial" in r.getMessage() for r in caplog.records) == 1


# -- fp16 weight variant -------------------------------------------------------------------------

PARTS = {
    "if": ((UNet2DConditionModel, "unet"), (T5EncoderModel, "text_encoder")),
    "sd": (
        (UNet2DConditionModel, "unet"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
    ),
}


@pytest.fixture(scope="module")
def tiny_fp16_dir(tmp_path_factory):
    """Tiny models with the default fp32 files and an fp16 variant, as IF-I-XL ships them."""
    d = tmp_path_factory.mktemp("tiny-fp16")
    save_tiny_models(d, variant="fp16")
    for sub in ("if/unet", "if/text_encoder", "sd/unet", "sd/vae", "sd/text_encoder"):
        assert list((d / sub).glob("*.fp16.safetensors")), sub
    return d


def _without(src, dst, pattern):
    """A copy of the pipeline folder ``src`` without the files matching ``pattern``."""
    shutil.copytree(src, dst)
    for f in dst.rglob(pattern):
        f.unlink()
    return dst


def _weights(cls, source, subfolder, variant):
    kw = {"torch_dtype": torch.float32} if subfolder != "text_encoder" else {"dtype": torch.float32}
    m = models.load_weights(cls, str(source), subfolder, variant, **kw)
    return {k: v.detach() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("which", ["if", "sd"])
def test_fp16_variant_is_read_when_present(which, tiny_fp16_dir):
    src = tiny_fp16_dir / which
    for cls, sub in PARTS[which]:
        fp32 = _weights(cls, src, sub, None)
        fp16 = _weights(cls, src, sub, "fp16")
        # Upcast to fp32 on the CPU, holding exactly the fp16-rounded values: the variant's file.
        assert all(v.dtype == torch.float32 for v in fp16.values()), sub
        assert all(torch.equal(fp16[k], fp32[k].half().float()) for k in fp32), sub
        assert any(not torch.equal(fp16[k], fp32[k]) for k in fp32), sub


@pytest.mark.parametrize("which", ["if", "sd"])
def test_no_variant_falls_back_to_the_default_files(which, tiny_dir, caplog):
    src = tiny_dir / which
    assert not list(src.rglob("*.fp16.safetensors"))
    for cls, sub in PARTS[which]:
        with caplog.at_level(logging.INFO, logger=models.__name__):
            fallback = _weights(cls, src, sub, "fp16")
        assert any("no fp16 weights" in r.getMessage() for r in caplog.records)
        fp32 = _weights(cls, src, sub, None)
        assert all(torch.equal(fallback[k], fp32[k]) for k in fp32), sub


def test_a_variant_only_folder_loads(tiny_fp16_dir, tmp_path):
    """A folder with only the fp16 files (``hf download --include '*.fp16.*'``) is enough."""
    src = _without(tiny_fp16_dir, tmp_path / "fp16-only", "*model.safetensors")
    assert not list(src.rglob("diffusion_pytorch_model.safetensors"))
    ifg = DeepFloydIFGuidance("a red chair", DeepFloydIFConfig(model=str(src / "if")))
    sdg = StableDiffusionGuidance(
        "a red chair", StableDiffusionConfig(model=str(src / "sd"), resolution=64)
    )
    assert ifg.unet.dtype == sdg.unet.dtype == sdg.vae.dtype == torch.float32  # CPU: fp32
    with pytest.raises(
        GuidanceError, match=r"no file named (diffusion_pytorch_)?model\.safetensors"
    ):
        StableDiffusionGuidance(
            "x", StableDiffusionConfig(model=str(src / "sd"), variant=None, resolution=64)
        )


def test_no_weights_at_all_is_a_clear_error(tiny_fp16_dir, tmp_path):
    src = _without(tiny_fp16_dir / "sd", tmp_path / "sd", "diffusion_pytorch_model*.safetensors")
    with pytest.raises(GuidanceError) as e:
        StableDiffusionGuidance("x", StableDiffusionConfig(model=str(src), resolution=64))
    msg = str(e.value)
    assert msg.startswith(f"could not load folder {src}") and "no file named" in msg
    assert "diffusion_pytorch_model.safetensors" in msg  # names the default files, not fp16's


def test_a_gated_repo_does_not_fall_back(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    class Gated(GatedRepoError):
        def __init__(self, msg):
            Exception.__init__(self, msg)

    calls = []

    class Loader:
        @classmethod
        def from_pretrained(cls, *a, **k):
            calls.append(k.get("variant"))
            raise OSError("no file named diffusion_pytorch_model.fp16.safetensors") from Gated("")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(GuidanceError, match="accept its licence"):
        models.load_weights(Loader, "DeepFloyd/IF-I-XL-v1.0", "unet", "fp16")
    assert calls == ["fp16"]


# -- VAE encoder gradient checkpointing ----------------------------------------------------------


def _sds_grad(g):
    rgb = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    torch.manual_seed(3)  # latent_dist.sample() draws from the global generator
    out = sds_loss(g, rgb, _ctx(), torch.tensor([50, 300, 600, 900]), NoiseConfig(),
                   torch.Generator().manual_seed(1))  # fmt: skip
    out.loss.backward()
    return rgb.grad


def test_vae_checkpointing_keeps_the_sds_gradient(sd_guidance, tiny_dir):
    from stabledreamer.guidance.vae_checkpointing import checkpointed_layers

    assert not sd_guidance.vae.encoder.gradient_checkpointing  # None on the CPU: off
    cfg = StableDiffusionConfig(
        model=str(tiny_dir / "sd"), resolution=64, vae_gradient_checkpointing=True
    )
    ckpt = StableDiffusionGuidance("a red chair", cfg)
    assert ckpt.vae.encoder.gradient_checkpointing
    calls = {}  # (guidance, layer index) -> calls of the layer's leaf modules

    def counter(key):
        def hook(module, args, out):
            calls[key] = calls.get(key, 0) + 1

        return hook

    handles = [
        leaf.register_forward_hook(counter((name, i)))
        for name, g in (("plain", sd_guidance), ("ckpt", ckpt))
        for i, layer in enumerate(checkpointed_layers(g.vae.encoder))
        for leaf in layer.modules()
        if not list(leaf.children())
    ]
    try:
        plain_grad = _sds_grad(sd_guidance)
        ckpt_grad = _sds_grad(ckpt)
    finally:
        for h in handles:
            h.remove()
    # Every resnet and the mid block runs again in the backward pass (up to the last tensor it
    # saves); a downsampler saves only its padded input, so only its (functional) pad reruns.
    for i, layer in enumerate(checkpointed_layers(ckpt.vae.encoder)):
        again = calls[("ckpt", i)] - calls[("plain", i)]
        assert again == 0 if type(layer).__name__ == "Downsample2D" else again > 0, layer
    assert plain_grad.abs().sum() > 0
    torch.testing.assert_close(ckpt_grad, plain_grad)


def test_vae_checkpointing_memory_estimate():
    from stabledreamer.doctor.gpu_memory import vae_encoder_saved_gib

    plain = vae_encoder_saved_gib(512, 1, 4, False)
    ckpt = vae_encoder_saved_gib(512, 1, 4, True)
    # Measured on the CPU (fp32, 1 view at 512², peak process memory): 3.17 and 1.58 GiB.
    assert 3.0 < plain < 3.5 and 1.3 < ckpt < 1.7
    assert vae_encoder_saved_gib(512, 4, 2, True) < 0.5 * vae_encoder_saved_gib(512, 4, 2, False)


def test_a_cached_hub_id_offline_falls_back_to_its_fp32_files(tiny_dir, tmp_path, monkeypatch):
    """A hub id downloaded whole before (``hf download``, fp32 files only), used offline."""
    from huggingface_hub import constants

    for which, repo in (("if", "owner/tiny-if"), ("sd", "owner/tiny-sd")):
        snapshot = tmp_path / ("models--" + repo.replace("/", "--"))
        (snapshot / "refs").mkdir(parents=True)
        (snapshot / "refs" / "main").write_text("0" * 40)
        shutil.copytree(tiny_dir / which, snapshot / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ifg = DeepFloydIFGuidance("a red chair", DeepFloydIFConfig(model="owner/tiny-if"))
    sdg = StableDiffusionGuidance(
        "a red chair", StableDiffusionConfig(model="owner/tiny-sd", resolution=64)
    )
    assert ifg.embeddings.cond.shape[0] == sdg.embeddings.cond.shape[0] == 4
