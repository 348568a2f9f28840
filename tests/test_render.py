"""render(): both CPU rasterisers (native C++ and pure torch) against the dense float64 reference,
gsplat meta, CUDA."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from stabledreamer.cameras import orbit_cameras
from stabledreamer.errors import ConfigError
from stabledreamer.render import backend as backend_mod
from stabledreamer.render import raster_native
from stabledreamer.render.backend import (
    RASTER_ENV,
    RenderBackendError,
    backend_from_env,
    resolve_backend,
)
from stabledreamer.render.dispatch import render as render_any
from stabledreamer.render.projection import project
from stabledreamer.render.reference import render_reference

H, W = 32, 40  # non-square on purpose


def make_scene(n: int = 200, degree: int = 0, seed: int = 1) -> dict[str, torch.Tensor]:
    """Anisotropic Gaussians spread wide enough that some sit behind a camera or off-screen."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    k = (degree + 1) ** 2 - 1
    return {
        "means": direction * 1.5 * torch.rand(n, 1, generator=g) ** (1 / 3),
        "scales": math.log(0.05) + 0.4 * torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) + 0.5,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": 0.3 * torch.randn(n, k, 3, generator=g),
    }


@pytest.fixture(params=["native", "torch"])
def raster_path(request):
    """Run a test once per CPU rasteriser (passed as ``backend``); the build happens once."""
    if request.param == "native" and not raster_native.available():
        pytest.skip(f"native CPU rasteriser did not build: {raster_native.build_error()}")
    return request.param


@pytest.fixture
def render(raster_path):
    """``render`` with the test's rasteriser named explicitly."""

    def fn(*args, **kwargs):
        return render_any(*args, backend=raster_path, **kwargs)

    return fn


def make_cameras():
    # The second camera sits at distance 1.2 inside the 1.5 ball: Gaussians behind it and beside it.
    return orbit_cameras([30.0, 200.0], [10.0, -20.0], [2.0, 1.2], 49.0, W, H)


def _run(fn, scene, cams, bg):
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    out = fn(params, cams, bg)
    gen = torch.Generator().manual_seed(3)
    wr, wa, wd = (torch.randn(*t.shape, generator=gen).to(t.dtype)
                  for t in (out.rgb, out.alpha, out.depth))  # fmt: skip
    # Expected depth is ill-conditioned where alpha is tiny (d depth / d alpha = -depth / alpha):
    # weight it by alpha so float32 vs float64 gradients stay comparable.
    depth_term = (out.depth * out.alpha.detach() * wd).sum()
    loss = (out.rgb * wr).sum() + (out.alpha * wa).sum() + 0.1 * depth_term
    loss.backward()
    grads = {k: v.grad for k, v in params.items() if v.numel()}
    return out, grads, out.meta["means2d"].grad


@pytest.mark.parametrize("degree", [0, 1])
def test_cpu_matches_dense_reference(degree, render):
    scene, cams = make_scene(degree=degree), make_cameras()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]])
    out, grads, g2d = _run(render, scene, cams, bg)
    ref, ref_grads, ref_g2d = _run(render_reference, scene, cams, bg)
    radii = out.meta["radii"]
    assert radii.shape == (2, 200, 2) and radii.dtype == torch.int32
    assert 0 < (radii > 0).all(-1).sum() < 400  # some culled: behind camera / off-screen
    assert (ref.alpha > 0.5).any() and (ref.alpha == 0).any()
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name).float(),
                                   atol=2e-5, rtol=1e-4, msg=name)  # fmt: skip
    assert set(grads) == set(ref_grads) == set(scene) - ({"shN"} if degree == 0 else set())
    for k, g in grads.items():
        scale = ref_grads[k].abs().max().item()
        torch.testing.assert_close(g, ref_grads[k].float(), atol=1e-5 * scale, rtol=1e-3, msg=k)
    # The meta gradient: only for Gaussians visible in that camera (DefaultStrategy's selection).
    vis = (radii > 0).all(-1)
    torch.testing.assert_close(g2d[vis], ref_g2d[vis].float(), atol=1e-5, rtol=1e-3)
    assert (g2d[~vis] == 0).all()


def test_empty_and_batched_views_agree(render):
    scene = make_scene()
    cams = make_cameras()
    bg = torch.ones(3)
    with torch.no_grad():
        both = render(scene, cams, bg)
        for c in range(2):
            single = render(scene, cams[c], bg)
            torch.testing.assert_close(single.rgb[0], both.rgb[c])
        far = {**scene, "means": scene["means"] + 100.0}
        empty = render(far, cams, bg)
    assert (empty.alpha == 0).all() and (empty.rgb == 1).all() and (empty.depth == 0).all()


def test_meta_drives_gsplat_default_strategy(render):
    from gsplat.strategy import DefaultStrategy

    scene = make_scene(n=300)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in scene.items()})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, reset_every=1000,
                               grow_grad2d=1e-9, verbose=False)  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    cams = make_cameras()
    for step in range(4):
        out = render(params, cams, torch.zeros(3))
        strategy.step_pre_backward(params, optimizers, state, step, out.meta)
        loss = (out.rgb - 0.5).square().mean() + out.alpha.mean()
        loss.backward()
        strategy.step_post_backward(params, optimizers, state, step, out.meta, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert params["means"].shape[0] > 300  # grew (duplicate/split) from the means2d gradient
    for k, p in params.items():
        assert p.shape[0] == params["means"].shape[0], k


def test_rejects_bad_input(monkeypatch):
    scene, cams = make_scene(n=10), make_cameras()
    with pytest.raises(ValueError, match="backend"):
        render_any(scene, cams, torch.ones(3), backend="vulkan")
    with pytest.raises(ValueError, match="background"):
        render_any(scene, cams, torch.ones(4))
    with pytest.raises(RenderBackendError, match="CUDA"):
        render_any(scene, cams, torch.ones(3), backend="gsplat")
    monkeypatch.setenv(RASTER_ENV, "opengl")
    with pytest.raises(ConfigError, match=RASTER_ENV):
        backend_from_env("auto")


def test_render_reads_no_environment(monkeypatch):
    """The path is the caller's choice: the environment variable is read only by the run (at its
    start, ``backend_from_env``), never by ``render()``."""
    scene, cams = make_scene(n=50), make_cameras()
    monkeypatch.setenv(RASTER_ENV, "opengl")  # would be refused if render() read it
    out = render_any(scene, cams, torch.ones(3), backend="torch")
    assert out.rgb.shape == (2, H, W, 3)
    monkeypatch.setenv(RASTER_ENV, "torch")
    assert backend_from_env("native") == "torch"
    monkeypatch.delenv(RASTER_ENV)
    assert backend_from_env("native") == "native"


def _needs_native():
    if not raster_native.available():
        pytest.skip(f"native CPU rasteriser did not build: {raster_native.build_error()}")


def test_native_projection_matches_torch():
    """Values and gradients of the C++ projection against projection.py's autograd."""
    _needs_native()
    scene, cams = make_scene(n=300), make_cameras()
    gen = torch.Generator().manual_seed(5)
    results = []
    for fn in (raster_native.project, project):
        p = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales")}
        proj = fn(p["means"], p["quats"], torch.exp(p["scales"]),
                  torch.sigmoid(scene["opacities"]), cams.viewmats, cams.Ks, W, H)  # fmt: skip
        gen.manual_seed(5)
        loss = sum((t * torch.randn(t.shape, generator=gen)).sum()
                   for t in (proj.means2d, proj.conics, proj.depths))  # fmt: skip
        loss.backward()
        results.append((proj, {k: v.grad for k, v in p.items()}))
    (nat, nat_g), (ref, ref_g) = results
    assert torch.equal(nat.radii, ref.radii) and torch.equal(nat.valid, ref.valid)
    assert 0 < nat.valid.sum() < nat.valid.numel()
    for name in ("means2d", "conics", "depths"):
        torch.testing.assert_close(getattr(nat, name), getattr(ref, name), rtol=1e-5, atol=1e-4)
    for k, g in nat_g.items():
        scale = ref_g[k].abs().max().item()
        torch.testing.assert_close(g, ref_g[k], atol=1e-5 * scale, rtol=1e-4, msg=k)


def test_native_kernel_variants_agree():
    """Every instruction-set variant of the tile kernels this CPU runs gives the same render, and
    repeated runs give bit-identical gradients (fixed-order reduction, any thread schedule)."""
    _needs_native()
    scene, cams = make_scene(degree=1), make_cameras()
    bg = torch.tensor([0.2, 0.5, 0.9])
    native = functools.partial(render_any, backend="native")
    best = raster_native.isa()
    variants = raster_native.ISA_NAMES[: raster_native.ISA_NAMES.index(best) + 1]
    runs = {}
    try:
        for name in variants:
            assert raster_native.set_isa(name) == name
            runs[name] = _run(native, scene, cams, bg)
    finally:
        raster_native.set_isa(best)
    out, grads, g2d = runs[best]
    again = _run(native, scene, cams, bg)  # bit-identical: training resumes must reproduce
    assert all(torch.equal(again[1][k], grads[k]) for k in grads) and torch.equal(again[2], g2d)
    for name in variants:
        o, gr, g = runs[name]
        for field in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(o, field), getattr(out, field), msg=field)
        for k in grads:
            torch.testing.assert_close(gr[k], grads[k], msg=f"{name} {k}")
        torch.testing.assert_close(g, g2d)


def test_falls_back_to_torch_when_native_is_missing(monkeypatch):
    monkeypatch.setattr(raster_native, "available", lambda: False)
    monkeypatch.setattr(raster_native, "build_error", lambda: "no compiler (simulated)")
    monkeypatch.setattr(backend_mod, "_notices", set())
    scene, cams = make_scene(n=50), make_cameras()
    with pytest.warns(RuntimeWarning, match="no compiler"):
        out = render_any(scene, cams, torch.ones(3))
    torch.testing.assert_close(out.rgb, render_any(scene, cams, torch.ones(3), backend="torch").rgb)
    with pytest.raises(RenderBackendError, match="no compiler"):
        resolve_backend("native", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_matches_gsplat_cuda():
    scene, cams = make_scene(degree=1), make_cameras()
    bg = torch.tensor([0.2, 0.5, 0.9])
    out, grads, g2d = _run(render_any, scene, cams, bg)
    scene_cuda = {k: v.cuda() for k, v in scene.items()}
    gpu, gpu_grads, gpu_g2d = _run(render_any, scene_cuda, cams.to("cuda"), bg.cuda())
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(out, name),
                                   atol=1e-3, rtol=1e-3, msg=name)  # fmt: skip
    for k, g in grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(gpu_grads[k].cpu(), g, atol=1e-3 * scale, rtol=1e-2, msg=k)
    torch.testing.assert_close(gpu_g2d.cpu(), g2d, atol=1e-3, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_path_takes_cuda_tensors():
    """The fallback when gsplat's kernels are missing: CUDA tensors in, CUDA gradients out."""
    scene, cams = make_scene(degree=1), make_cameras()
    bg = torch.tensor([0.2, 0.5, 0.9])
    ref, grads, g2d = _run(functools.partial(render_any, backend="torch"), scene, cams, bg)
    scene_cuda = {k: v.cuda() for k, v in scene.items()}
    torch_cuda = functools.partial(render_any, backend="torch")
    out, out_grads, out_g2d = _run(torch_cuda, scene_cuda, cams.to("cuda"), bg.cuda())
    assert out.rgb.is_cuda and out.meta["radii"].is_cuda and out_g2d.is_cuda
    torch.testing.assert_close(out.rgb.cpu(), ref.rgb, atol=1e-4, rtol=1e-4)
    for k, g in grads.items():
        assert out_grads[k].is_cuda
        scale = g.abs().max().item()
        torch.testing.assert_close(out_grads[k].cpu(), g, atol=1e-4 * scale, rtol=1e-3, msg=k)
