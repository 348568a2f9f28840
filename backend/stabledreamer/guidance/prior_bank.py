"""The example bank of the example-based prior: labelled renders of known objects, and their meshes.

A bank is one folder with two files: ``bank.json`` (the header: objects with their prompt, whether
they have a front and where they came from; the resolutions; the cameras' distance and field of
view) and ``bank.npz`` (per resolution R the renders ``rgb_R`` [N, R, R, 3] premultiplied on black
and ``alpha_R`` [N, R, R], both uint8; per image its object ``label``, ``azimuth`` and
``elevation`` in degrees; per object k its ground-truth mesh, normalised, ``mesh{k}_*``).

Views are drawn uniformly over the sphere between two elevations (azimuth uniform,
sin(elevation) uniform; by default -10 to 90 degrees, the toy preset's camera range), each object
its own, except within ``exclusion_deg`` of a camera of the held-out ring
(``cameras.heldout_cameras``): the bank never holds the evaluation views. Renders are the exact
z-buffer views of ``targets.raster`` (as the oracle's), made once at the largest resolution with
``supersample`` and box-filtered down to the others.

The built-in catalogue (``targets.catalogue``) has its bank built on first use and cached (see
``catalogue_bank_dir``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cameras import heldout_cameras, orbit_cameras, orbit_position
from ..targets.raster import render_mesh
from ..targets.target_mesh import TargetMesh
from .base import GuidanceError

BANK_VERSION = 1
CATALOGUE = "catalogue"
"""The name ``--prior`` takes for the built-in catalogue's cached bank."""
_MESH_FIELDS = ("vertices", "faces", "vertex_colors", "face_colors", "uvs", "texture",
                "texture_rects")  # fmt: skip


class PriorBankError(GuidanceError):
    """A bank cannot be built, read or used as asked; the message says what to do."""


@dataclass
class BankBuildConfig:
    views: int = 200
    """Views per object. 200 leave about 11 degrees between neighbours over the default band,
    14 over the whole sphere (our choice: the catalogue's bank then builds in 60-84 s on this
    2-core CPU, one thread, shared with other jobs)."""
    resolutions: tuple[int, ...] = (64, 128)
    """Image sizes kept; each must divide the largest. 64 is the geometry stage's (DeepFloyd IF
    stage I's size), 128 the detail stage's of the toy preset."""
    supersample: int = 2
    """Renders at the largest resolution are made at this multiple and box-filtered."""
    distance: float = 2.5
    """Camera distance: the training cameras' (``CameraConfig.distance``)."""
    fov_y_deg: float = 49.0
    """Field of view: the training cameras' (``CameraConfig.fov_y_deg``)."""
    elevation_deg: tuple[float, float] = (-10.0, 90.0)
    """Elevations the views are drawn from (uniform on the sphere between them): the toy preset's
    camera range (threestudio's default). Over the whole sphere (-90, 90) the bank's views from
    far below are the nearest examples to a faint blob, and thin objects collapse into them;
    measured (toy preset, seed 0, whole sphere -> this band): table lamp 11.6 -> 32.0 dB held-out,
    chair 13.3 -> 23.7, round table 13.0 -> 14.9, car 21.9 -> 22.8, creature 18.3 -> 16.6."""
    exclusion_deg: float = 5.0
    """No bank view within this angle of a held-out ring camera (so the prior is no oracle)."""
    seed: int = 0

    def validate(self) -> None:
        if self.views < 4:
            raise PriorBankError(f"--views must be at least 4, got {self.views}")
        lo, hi = self.elevation_deg
        if not -90.0 <= lo < hi <= 90.0:
            raise PriorBankError(f"--elevation {lo} {hi}: need -90 <= LOW < HIGH <= 90")
        if not self.resolutions or min(self.resolutions) < 8:
            raise PriorBankError("give resolutions of at least 8 pixels, e.g. --resolution 64 128")
        top = max(self.resolutions)
        bad = [r for r in self.resolutions if top % r]
        if bad:
            raise PriorBankError(
                f"resolutions {bad} do not divide the largest, {top}: the smaller images are "
                "box-filtered from the largest (e.g. --resolution 64 128)"
            )


@dataclass
class BankObject:
    prompt: str
    has_front: bool
    source: str  # a mesh path, or ``catalogue``


class PriorBank:
    """A bank read from its folder; images are read per resolution when first asked for."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        header, npz = self.folder / "bank.json", self.folder / "bank.npz"
        if not header.is_file() or not npz.is_file():
            raise PriorBankError(
                f"{self.folder}: not a prior bank (no bank.json and bank.npz); build one with "
                "`stabledreamer prior build DIR --object PROMPT=MESH`, or use --prior catalogue"
            )
        self.header = json.loads(header.read_text())
        if self.header.get("version") != BANK_VERSION:
            raise PriorBankError(
                f"{self.folder}: bank version {self.header.get('version')}, this backend reads "
                f"{BANK_VERSION}; rebuild it with `stabledreamer prior build`"
            )
        self.objects = [BankObject(**o) for o in self.header["objects"]]
        self.resolutions = tuple(self.header["resolutions"])
        self.distance = float(self.header["distance"])
        self.fov_y_deg = float(self.header["fov_y_deg"])
        self._npz = np.load(npz)
        self.labels = torch.from_numpy(self._npz["label"].astype(np.int64))
        self.azimuth_deg = torch.from_numpy(self._npz["azimuth"].astype(np.float32))
        self.elevation_deg = torch.from_numpy(self._npz["elevation"].astype(np.float32))

    @property
    def prompts(self) -> list[str]:
        return [o.prompt for o in self.objects]

    def __len__(self) -> int:
        return len(self.labels)

    def index_of(self, prompt: str) -> int:
        """The label of ``prompt``; a prompt the bank does not hold is refused with the list."""
        prompt = " ".join(prompt.split())
        for i, o in enumerate(self.objects):
            if o.prompt == prompt:
                return i
        listed = "; ".join(f'"{p}"' for p in self.prompts)
        raise PriorBankError(
            f'"{prompt}" is not one of this prior bank\'s prompts ({self.folder}): the '
            f"example-based prior only knows the objects it holds. Choose one of: {listed}; or "
            'add your object with `stabledreamer prior build DIR --object "PROMPT=MESH"`'
        )

    def images(self, resolution: int) -> tuple[Tensor, Tensor]:
        """rgb [N, R, R, 3] premultiplied (on black) and alpha [N, R, R, 1], float32 in [0, 1]."""
        rgb, alpha = self.images_u8(resolution)
        return rgb.float() / 255.0, alpha.float()[..., None] / 255.0

    def images_u8(self, resolution: int) -> tuple[Tensor, Tensor]:
        """rgb [N, R, R, 3] premultiplied (on black) and alpha [N, R, R], uint8 as stored."""
        if resolution not in self.resolutions:
            raise PriorBankError(
                f"the prior bank {self.folder} has images at {list(self.resolutions)} pixels, not "
                f"{resolution}; set the stage's resolution to one of them or rebuild the bank "
                f"with --resolution {resolution}"
            )
        return (
            torch.from_numpy(self._npz[f"rgb_{resolution}"]),
            torch.from_numpy(self._npz[f"alpha_{resolution}"]),
        )

    def target_mesh(self, prompt: str) -> TargetMesh:
        """The ground-truth mesh of ``prompt`` (normalised, as it was rendered)."""
        k = self.index_of(prompt)
        fields = {
            f: torch.from_numpy(self._npz[f"mesh{k}_{f}"])
            for f in _MESH_FIELDS
            if f"mesh{k}_{f}" in self._npz.files
        }
        return TargetMesh(**fields)

    def has_front(self, prompt: str) -> bool:
        return self.objects[self.index_of(prompt)].has_front


# --------------------------------------------------------------------------------------------
# Building


def bank_cameras(cfg: BankBuildConfig, n: int, generator: torch.Generator):
    """``n`` random directions over the sphere (between the elevation bounds), none within
    ``exclusion_deg`` of the held-out ring; returns azimuth and elevation [n] in degrees."""
    ring = heldout_cameras(8, 8, distance=1.0).positions  # [8, 3] unit directions
    cos_min = math.cos(math.radians(cfg.exclusion_deg))
    az_all, el_all = [], []
    have = 0
    while have < n:
        m = 2 * (n - have) + 8
        az = 360.0 * torch.rand(m, generator=generator)
        sin_lo, sin_hi = (math.sin(math.radians(e)) for e in cfg.elevation_deg)
        u = sin_lo + (sin_hi - sin_lo) * torch.rand(m, generator=generator)
        el = torch.rad2deg(torch.asin(u.clamp(-1.0, 1.0)))
        el = el.clamp(-89.5, 89.5)  # straight up or down has no defined image orientation
        d = orbit_position(az, el, torch.ones(m))
        keep = (d @ ring.T).max(dim=1).values < cos_min
        az_all.append(az[keep])
        el_all.append(el[keep])
        have += int(keep.sum())
    return torch.cat(az_all)[:n], torch.cat(el_all)[:n]


def _mesh_arrays(mesh: TargetMesh, k: int) -> dict[str, np.ndarray]:
    out = {}
    for f in _MESH_FIELDS:
        v = getattr(mesh, f)
        if v is not None:
            out[f"mesh{k}_{f}"] = v.numpy()
    return out


def build_bank(
    objects: list[tuple[BankObject, TargetMesh]],
    out: str | os.PathLike,
    cfg: BankBuildConfig,
    overwrite: bool = False,
    log=print,
) -> Path:
    """Render every object from ``cfg.views`` random views and write the bank folder ``out``.

    Written into a temporary folder beside ``out`` and renamed: nothing half-built is left."""
    cfg.validate()
    out = Path(out)
    if not objects:
        raise PriorBankError('give at least one object: --object "PROMPT=MESH" (or --catalogue)')
    prompts = [o.prompt for o, _ in objects]
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise PriorBankError(f"prompts {dup} are given twice; each object needs its own prompt")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PriorBankError(f"{out} already exists; pass --overwrite to replace it")
        if not (out / "bank.json").is_file():
            raise PriorBankError(f"{out} is not empty and is not a prior bank; choose another OUT")
    top = max(cfg.resolutions)
    gen = torch.Generator().manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    # One thread: the renderer's many small ops gain nothing from more, and on a busy CPU the
    # spinning threads cost far more (the catalogue's bank under load ~10: 1 thread 84 s wall and
    # 26 s CPU, 2 threads 763 s and 268 s).
    torch.set_num_threads(1)
    try:
        data, header = _render_all(objects, cfg, top, gen, log)
    finally:
        torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
    try:
        np.savez(tmp / "bank.npz", **data)
        (tmp / "bank.json").write_text(json.dumps(header, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _render_all(objects, cfg: BankBuildConfig, top: int, gen: torch.Generator, log):
    """The bank's arrays and header (see the module docstring)."""
    arrays: dict[str, list[np.ndarray]] = {f"rgb_{r}": [] for r in cfg.resolutions}
    arrays.update({f"alpha_{r}": [] for r in cfg.resolutions})
    labels, azs, els, meshes = [], [], [], {}
    start = time.perf_counter()
    for k, (obj, mesh) in enumerate(objects):
        az, el = bank_cameras(cfg, cfg.views, gen)
        cams = orbit_cameras(az, el, cfg.distance, cfg.fov_y_deg, top, top)
        rgb, alpha = render_mesh(mesh, cams, torch.zeros(3), supersample=cfg.supersample)
        for r in cfg.resolutions:
            f = top // r
            rr = rgb.view(-1, r, f, r, f, 3).mean(dim=(2, 4))
            aa = alpha.view(-1, r, f, r, f).mean(dim=(2, 4))
            arrays[f"rgb_{r}"].append(_to_u8(rr))
            arrays[f"alpha_{r}"].append(_to_u8(aa))
        labels.append(np.full(cfg.views, k, dtype=np.int16))
        azs.append(az.numpy())
        els.append(el.numpy())
        meshes.update(_mesh_arrays(mesh, k))
        log(f"  {obj.prompt}: {cfg.views} views ({time.perf_counter() - start:.0f} s)")
    data = {k: np.concatenate(v) for k, v in arrays.items()}
    data.update(label=np.concatenate(labels), azimuth=np.concatenate(azs))
    data.update(elevation=np.concatenate(els), **meshes)
    header = {
        "version": BANK_VERSION,
        "objects": [asdict(o) for o, _ in objects],
        "resolutions": list(cfg.resolutions),
        "views_per_object": cfg.views,
        "distance": cfg.distance,
        "fov_y_deg": cfg.fov_y_deg,
        "exclusion_deg": cfg.exclusion_deg,
        "elevation_deg": list(cfg.elevation_deg),
        "supersample": cfg.supersample,
        "seed": cfg.seed,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    return data, header


def _to_u8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------
# The catalogue's cached bank


def catalogue_bank_dir() -> Path:
    """Where the catalogue's bank is cached: ``$STABLEDREAMER_PRIOR_CACHE``, else
    ``$XDG_CACHE_HOME/stabledreamer/prior`` (``~/.cache`` without it), one folder per version."""
    root = os.environ.get("STABLEDREAMER_PRIOR_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "stabledreamer" / "prior")
    cfg = BankBuildConfig()
    lo, hi = cfg.elevation_deg
    return Path(root) / f"catalogue-v{BANK_VERSION}-{cfg.views}views-el{lo:g}_{hi:g}"


def catalogue_objects() -> list[tuple[BankObject, TargetMesh]]:
    from ..targets.catalogue import CATALOGUE as ENTRIES
    from ..targets.catalogue import target_mesh

    return [(BankObject(e.prompt, e.has_front, CATALOGUE), target_mesh(e.prompt)) for e in ENTRIES]


def ensure_catalogue_bank(log=print) -> Path:
    """The catalogue's bank folder, built (about 2 minutes, once) if it is not cached yet."""
    out = catalogue_bank_dir()
    if not (out / "bank.json").is_file():
        log(f"building the catalogue's prior bank once into {out} (about 2 minutes)")
        build_bank(catalogue_objects(), out, BankBuildConfig(), overwrite=True, log=log)
    return out


_OPEN: dict[str, PriorBank] = {}


def open_bank(spec: str, log=print) -> PriorBank:
    """A bank by folder, or ``catalogue`` (built and cached on first use); kept open per path."""
    folder = ensure_catalogue_bank(log) if spec == CATALOGUE else Path(spec)
    npz = Path(folder) / "bank.npz"
    key = f"{Path(folder).resolve()}:{npz.stat().st_mtime_ns if npz.exists() else 0}"
    if key not in _OPEN:
        _OPEN.clear()  # one bank open at a time: its images can be large
        _OPEN[key] = PriorBank(folder)
    return _OPEN[key]
