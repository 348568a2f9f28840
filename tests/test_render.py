"""render(): the sparse CPU rasteriser against the dense float64 reference, gsplat meta, CUDA."""

from __future__ import annotations

import math

import pytest
import torch
from stabledreamer.cameras import orbit_cameras
from stabledreamer.raster_reference import render_reference
from stabledreamer.render import render

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
def test_cpu_matches_dense_reference(degree):
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


def test_empty_and_batched_views_agree():
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


def test_meta_drives_gsplat_default_strategy():
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


def test_rejects_bad_input():
    scene, cams = make_scene(n=10), make_cameras()
    with pytest.raises(ValueError, match="backend"):
        render(scene, cams, torch.ones(3), backend="vulkan")
    with pytest.raises(ValueError, match="background"):
        render(scene, cams, torch.ones(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_matches_gsplat_cuda():
    scene, cams = make_scene(degree=1), make_cameras()
    bg = torch.tensor([0.2, 0.5, 0.9])
    out, grads, g2d = _run(render, scene, cams, bg)
    scene_cuda = {k: v.cuda() for k, v in scene.items()}
    gpu, gpu_grads, gpu_g2d = _run(render, scene_cuda, cams.to("cuda"), bg.cuda())
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(out, name),
                                   atol=1e-3, rtol=1e-3, msg=name)  # fmt: skip
    for k, g in grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(gpu_grads[k].cpu(), g, atol=1e-3 * scale, rtol=1e-2, msg=k)
    torch.testing.assert_close(gpu_g2d.cpu(), g2d, atol=1e-3, rtol=1e-2)
