"""Tiny random IF-like and SD-like pipelines, built offline and saved as safetensors.

No weights can be downloaded in CI, so tests (and ``stabledreamer tiny-models DIR``) build small
random models from configs (after diffusers' own pipeline tests), ``save_pretrained`` them, and load
them back through the real loading code (``stabledreamer.guidance.models``). The tokenizers are
made from in-code vocabularies (transformers 5 builds them from Python objects): a T5 unigram vocab
of letters, digits and punctuation, and a CLIP BPE vocab over the 256 byte-level symbols, no merges.
The outputs are noise; only shapes, dtypes and code paths are real.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

TEXT_DIM = 32
"""Hidden size of the tiny text encoders (= the UNets' cross-attention dim)."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (CLIP's BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)


def build_tiny_if(seed: int = 0):
    """An IF-stage-I-like pipeline: pixel UNet 3 -> 6 channels (learned variance), T5 encoder."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    # The IF stage-I UNet layout in miniature (diffusers tests/pipelines/deepfloyd_if).
    unet = UNet2DConditionModel(
        sample_size=64,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=TEXT_DIM,
        encoder_hid_dim=TEXT_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def build_tiny_sd(seed: int = 0):
    """An SD-like pipeline: latent UNet (32, 64), an 8x-downsampling VAE, a CLIP text encoder."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(  # 4 blocks: 3 downsamplings, 8x, as SD's VAE
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.18215,
    )
    scheduler = DDIMScheduler(  # SD 1.x/2.x "scaled_linear" betas
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_models(
    out_dir: str | Path, seed: int = 0, variant: str | None = None
) -> dict[str, Path]:
    """Build both tiny pipelines and save them (safetensors) into ``out_dir``/if and /sd.

    ``variant="fp16"`` also writes the weights as ``*.fp16.safetensors`` in float16 next to the
    default fp32 files, as IF-I-XL and SD 2.1-base ship them (another variant name: the same
    fp32 weights under that name)."""
    out = Path(out_dir)
    paths = {"if": out / "if", "sd": out / "sd"}
    for name, build in (("if", build_tiny_if), ("sd", build_tiny_sd)):
        pipe = build(seed)
        pipe.save_pretrained(paths[name], safe_serialization=True)
        if variant:
            if variant == "fp16":
                for part in ("unet", "vae", "text_encoder"):
                    if getattr(pipe, part, None) is not None:
                        getattr(pipe, part).to(torch.float16)
            pipe.save_pretrained(paths[name], safe_serialization=True, variant=variant)
    return paths
