"""Loading diffusion models: diffusers/transformers ``from_pretrained`` with clear errors.

A model source is a hub id (``DeepFloyd/IF-I-XL-v1.0``) or a local folder laid out as a diffusers
pipeline (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``vae/``). Weights load as
safetensors only and no remote code runs; a weight variant (``fp16``: ``*.fp16.safetensors``) is
tried first and the default files used when the source has none. Failures become
``GuidanceError`` messages that say what to do: a missing folder, a hub id while offline, a gated
repository (DeepFloyd IF).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..models.sets import DEEPFLOYD_IF_LICENCE
from .base import GuidanceError

log = logging.getLogger(__name__)

DEEPFLOYD_NOTICE = (
    "DeepFloyd IF weights are under the DeepFloyd IF licence: research and non-commercial use "
    f"only ({DEEPFLOYD_IF_LICENCE.url}). Outputs made with stage 1 inherit its terms; the "
    "sd-only model set (`--models sd-only`) allows commercial use."
)
_notice_shown = False


def deepfloyd_notice() -> bool:
    """Log the DeepFloyd IF licence notice once per process; True the first time."""
    global _notice_shown
    if _notice_shown:
        return False
    _notice_shown = True
    log.warning(DEEPFLOYD_NOTICE)
    return True


def hub_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return v in ("1", "true", "yes", "on")


def looks_like_path(source: str) -> bool:
    """A folder (absolute, ./ or ../, ~, or more than one '/') rather than a hub id."""
    s = str(source)
    return (
        s.startswith(("/", "./", "../", "~", "."))
        or s.count("/") > 1
        or "\\" in s
        or Path(s).expanduser().exists()
    )


def resolve_source(source: str | os.PathLike) -> str:
    """The local folder (checked) or the hub id to pass to ``from_pretrained``."""
    s = str(source)
    if not s:
        raise GuidanceError("no model given: pass a hub id (owner/name) or a local folder")
    if looks_like_path(s):
        p = Path(s).expanduser()
        if not p.is_dir():
            raise GuidanceError(
                f"model folder {p} does not exist: give a folder made by save_pretrained "
                "(with unet/, text_encoder/, tokenizer/, scheduler/), e.g. "
                f"`stabledreamer tiny-models DIR` for test models or `hf download <id> "
                f"--local-dir {p}` on a machine with network"
            )
        return str(p)
    if s.count("/") != 1:
        raise GuidanceError(f"{s!r} is neither a folder nor a hub id of the form owner/name")
    return s


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def explain_load_error(source: str, e: BaseException) -> GuidanceError:
    """Turn a ``from_pretrained`` failure into a message that says what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    errs = list(_chain(e))
    text = " ".join(str(x) for x in errs)
    is_local = Path(source).is_dir()
    if any(isinstance(x, GatedRepoError) for x in errs) or "gated" in text.lower():
        return GuidanceError(
            f"{source} is a gated repository: open https://huggingface.co/{source} while logged "
            "in, accept its licence (DeepFloyd IF: research, non-commercial), then give a token: "
            "`hf auth login`, or set HF_TOKEN=<a read token from "
            "https://huggingface.co/settings/tokens> (and unset HF_HUB_OFFLINE)"
        )
    if not is_local and hub_offline():
        return GuidanceError(
            f"{source} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
            "downloading it: run `stabledreamer models download SET` (`models list` names the "
            f"sets) or `hf download {source}` with network (or unset HF_HUB_OFFLINE), "
            "or give a local folder made by save_pretrained"
        )
    if not is_local and any(isinstance(x, RepositoryNotFoundError) for x in errs):
        return GuidanceError(
            f"{source}: no such repository on the Hugging Face hub (check the id; private repos "
            "need `hf auth login` or HF_TOKEN)"
        )
    where = "folder" if is_local else "model"
    return GuidanceError(f"could not load {where} {source}: {type(e).__name__}: {e}")


def load_component(cls: Any, source: str, subfolder: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source, subfolder=...)``: safetensors only, no remote code."""
    if subfolder and Path(source).is_dir() and not (Path(source) / subfolder).is_dir():
        raise GuidanceError(
            f"model folder {source} has no {subfolder}/: it is not a diffusers pipeline folder "
            "(save one with save_pretrained or `hf download <id> --local-dir DIR`)"
        )
    extra = (
        {} if subfolder == "tokenizer" or subfolder == "scheduler" else {"use_safetensors": True}
    )
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **extra, **kwargs)
    except GuidanceError:
        raise
    except Exception as e:  # noqa: BLE001 - every loader failure gets an explanation
        raise explain_load_error(source, e) from e


def variant_missing(e: BaseException, variant: str) -> bool:
    """Whether ``from_pretrained(..., variant=variant)`` failed because the variant's weight files
    are not there. diffusers and transformers both raise ``OSError`` naming the missing file
    (``diffusion_pytorch_model.fp16.safetensors``, ``model.fp16.safetensors``; from the hub
    wrapped around ``EntryNotFoundError``); a gated or unknown repository is not that."""
    from huggingface_hub.errors import RepositoryNotFoundError

    errs = list(_chain(e))
    if any(isinstance(x, RepositoryNotFoundError) for x in errs):  # gated is a subclass
        return False
    return any(isinstance(x, OSError) and f".{variant}." in str(x) for x in errs)


def load_weights(cls: Any, source: str, subfolder: str, variant: str | None, **kwargs: Any) -> Any:
    """``load_component`` for a part with weights: the ``variant``'s files (``*.fp16.*``) when
    the source has them, else the default files (a folder saved without variants)."""
    if variant:
        # diffusers logs a missing variant as an ERROR before raising: quiet while we try.
        quiet = logging.getLogger("diffusers.models.modeling_utils")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            return load_component(cls, source, subfolder, variant=variant, **kwargs)
        except GuidanceError as e:
            if e.__cause__ is None or not variant_missing(e.__cause__, variant):
                raise
        finally:
            quiet.setLevel(level)
        log.info(
            "%s has no %s weights in %s/: loading the default files", source, variant, subfolder
        )
    return load_component(cls, source, subfolder, **kwargs)


# -- helpers shared by the real guidances -------------------------------------------------------


def pick_device_dtype(half_precision: bool, device: str | None = None):
    """(device, dtype): CUDA when present, fp16 there if ``half_precision``; fp32 on CPU."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if (half_precision and dev.type == "cuda") else torch.float32
    return dev, dtype


def release_memory() -> None:
    """Collect dropped modules (the text encoder once the prompts are encoded): the caller
    deletes its references first."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def enable_cpu_offload(module: Any, device: Any) -> Any:
    """Keep ``module``'s weights in CPU memory and stream them to ``device`` per forward (CUDA
    only; on CPU there is nothing to offload)."""
    if device.type != "cuda":
        return module
    from accelerate import cpu_offload

    cpu_offload(module, execution_device=device)
    return module


class ViewEmbeddings:
    """Text embeddings of one prompt: one per view suffix (``prompts.VIEWS``) and the negative
    prompt's, cached so the text encoder can be freed.

    ``encode_texts(texts) -> [N, L, D]`` is the model's tokenisation and forward. With
    ``one_by_one`` each text is encoded alone, so a text's embedding never depends on which
    texts it was batched with (on the CPU, where a warm worker's lazy encoding must match a
    fresh one's bit for bit). With ``lazy`` (implies ``one_by_one``) a view's prompt is encoded
    when a camera first needs it (``prepare``/``for_cameras``): a new prompt's first step then
    waits for the views it sees, not all four; ``encode_texts`` is kept until every view is
    encoded, so only a guidance that keeps its text encoder anyway may ask for it."""

    def __init__(
        self,
        prompt: str,
        negative_prompt: str,
        view_cfg: Any,
        encode_texts,
        *,
        one_by_one: bool = False,
        lazy: bool = False,
    ) -> None:
        import torch

        from .prompts import VIEWS, view_prompt

        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.view_cfg = view_cfg
        self.texts = [view_prompt(prompt, v, view_cfg) for v in VIEWS]
        self._views: list = [None] * len(VIEWS)
        self._encode = None
        with torch.no_grad():
            if lazy:
                self._encode = encode_texts
                self.uncond = encode_texts([negative_prompt])  # [1, L, D]
            elif one_by_one:
                self._views = [encode_texts([text]) for text in self.texts]
                self.uncond = encode_texts([negative_prompt])
            else:
                emb = encode_texts([*self.texts, negative_prompt])  # [5, L, D]
                self._views = list(emb[: len(VIEWS)].split(1))
                self.uncond = emb[len(VIEWS) :]  # [1, L, D]

    def encoded(self) -> list[int]:
        """Indices into ``VIEWS`` of the views encoded so far."""
        return [i for i, e in enumerate(self._views) if e is not None]

    def _ensure(self, indices) -> None:
        import torch

        for i in sorted(set(indices)):
            if self._views[i] is None:
                with torch.no_grad():
                    self._views[i] = self._encode([self.texts[i]])
        if self._encode is not None and all(e is not None for e in self._views):
            self._encode = None  # every view encoded: let go of the encoder

    def _indices(self, cameras: Any) -> list[int]:
        from .prompts import view_indices

        idx = view_indices(self.view_cfg, cameras.azimuth_deg.cpu(), cameras.elevation_deg.cpu())
        return idx.tolist()

    def prepare(self, cameras: Any) -> None:
        """Encode the views ``cameras`` need that are not encoded yet (nothing to do, and no
        look at the cameras, once every view is encoded)."""
        if self._encode is not None:
            self._ensure(self._indices(cameras))

    @property
    def cond(self):
        """[4, L, D]: every view's embedding (encoding those not encoded yet)."""
        import torch

        self._ensure(range(len(self._views)))
        return torch.cat(self._views)

    def for_cameras(self, cameras: Any):
        """(cond [B, L, D], uncond [B, L, D]) for a batch of cameras."""
        import torch

        idx = self._indices(cameras)
        self._ensure(idx)
        cond = torch.cat([self._views[i] for i in idx])
        return cond, self.uncond.expand_as(cond)


def embed_view_prompts(
    source: str,
    tokenizer_cls: Any,
    encoder_cls: Any,
    prompt: str,
    cfg: Any,
    device: Any,
    dtype: Any,
    encode_texts,
) -> ViewEmbeddings:
    """Load the tokenizer and text encoder of ``source``, encode ``prompt`` for every view and
    ``cfg.negative_prompt`` once (on the CPU each text alone, as a warm worker does), then free
    the encoder (the embeddings are all later steps need; the encoder is the largest memory
    cost). ``encode_texts(tokenizer, encoder, texts)``
    is the model's own tokenisation and forward. The tokenizer's own class, not
    ``AutoTokenizer``: transformers 5's ``AutoTokenizer`` also looks for ``tokenizer/config.json``,
    which pipelines do not have, and offline that fails for a hub id whose snapshot was
    downloaded whole (``hf download``) rather than file by file."""
    from functools import partial

    tokenizer, encoder = load_text_encoder(source, tokenizer_cls, encoder_cls, cfg, device, dtype)
    encode = partial(encode_texts, tokenizer, encoder)
    one_by_one = getattr(device, "type", str(device)) == "cpu"
    embeddings = ViewEmbeddings(
        prompt, cfg.negative_prompt, cfg.view_prompts, encode, one_by_one=one_by_one
    )
    del encode, encoder, tokenizer
    release_memory()
    return embeddings


def text_encoder_streamed(cfg: Any) -> bool:
    """Whether the memory tier streams the text encoder from CPU memory (accelerate hooks)."""
    return bool(getattr(cfg, "cpu_offload", False) or getattr(cfg, "text_encoder_offload", False))


def load_text_encoder(
    source: str, tokenizer_cls: Any, encoder_cls: Any, cfg: Any, device: Any, dtype: Any
) -> tuple[Any, Any]:
    """(tokenizer, text encoder) of ``source``, the encoder in eval mode on ``device`` or
    streamed from CPU memory as the memory tier says (``text_encoder_streamed``)."""
    tokenizer = load_component(tokenizer_cls, source, "tokenizer")
    encoder = load_weights(encoder_cls, source, "text_encoder", cfg.variant, dtype=dtype)
    encoder.eval()
    if text_encoder_streamed(cfg):
        enable_cpu_offload(encoder, device)  # streamed layer by layer: T5-XXL needs no 10.75 GiB
    else:
        encoder.to(device)
    return tokenizer, encoder


def resize_renders(rgb: Any, size: int) -> Any:
    """Renders [B, H, W, 3] -> [B, 3, size, size] (antialiased bilinear when resizing)."""
    import torch.nn.functional as F

    x = rgb.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x
