"""Target meshes: loading every format and colour source, normalisation, errors, and the mesh
rasteriser against trimesh's ray-triangle intersection (a slow, independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from stabledreamer.cameras import Cameras, intrinsics, look_at, orbit_cameras
from stabledreamer.targets.procedural import (
    COLOURS,
    Z_UP_TO_Y_UP,
    demo_target,
    demo_target_mesh,
    write_demo_target,
)
from stabledreamer.targets.raster import render_mesh, render_mesh_depth
from stabledreamer.targets.target_mesh import (
    NORMALISED_RADIUS,
    TargetError,
    TargetMesh,
    linear_to_srgb,
    load_target,
    srgb_to_linear,
    target_from_scene,
)

WHITE = torch.ones(3)
FRONT = (200, 30, 60, 255)  # colour of the -Y side in the loading tests
BACK = (20, 180, 90, 255)


# ---------------------------------------------------------------------------------------------
# Reference: trimesh ray casting through pixel centres


class _AllTriangles:
    """Stands in for trimesh's rtree broad phase (rtree is not a dependency): every triangle is a
    candidate, and trimesh's own exact ray-triangle test does the work."""

    def __init__(self, triangles: np.ndarray) -> None:
        self.bounds = np.concatenate(
            [triangles.reshape(-1, 3).min(0), triangles.reshape(-1, 3).max(0)]
        )
        self.n = len(triangles)

    def intersection(self, _bounds):
        return range(self.n)


def raycast(vertices: np.ndarray, faces: np.ndarray, cameras: Cameras, c: int = 0, near=1e-2):
    """Nearest face id [H, W] (-1: miss) and barycentrics [H, W, 3] at pixel centres."""
    H, W = cameras.height, cameras.width
    K = cameras.Ks[c].double().numpy()
    vm = cameras.viewmats[c].double().numpy()
    R, t = vm[:3, :3], vm[:3, 3]
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(H * W)], 1)
    d_cam = pix @ np.linalg.inv(K).T  # z = 1: the ray parameter is the camera depth
    d_world = d_cam @ R
    origin = -R.T @ t
    tris = vertices[faces].astype(np.float64)
    tri, ray, loc = trimesh.ray.ray_triangle.ray_triangle_id(
        tris, np.tile(origin, (H * W, 1)), d_world, tree=_AllTriangles(tris)
    )
    depth = (loc - origin) @ R[2]
    ok = depth > near
    tri, ray, loc, depth = tri[ok], ray[ok], loc[ok], depth[ok]
    order = np.lexsort((depth, ray))  # nearest first within each ray
    tri, ray, loc = tri[order], ray[order], loc[order]
    first = np.unique(ray, return_index=True)[1]
    face = np.full(H * W, -1)
    bary = np.zeros((H * W, 3))
    face[ray[first]] = tri[first]
    bary[ray[first]] = trimesh.triangles.points_to_barycentric(tris[tri[first]], loc[first])
    return face.reshape(H, W), bary.reshape(H, W, 3)


def reference_colours(target: TargetMesh, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Colour [H, W, 3] (nan where no hit) by plain numpy interpolation of the target's data."""
    out = np.full(face.shape + (3,), np.nan)
    hit = face >= 0
    f, b = face[hit], bary[hit]
    if target.face_colors is not None:
        out[hit] = target.face_colors.numpy()[f]
    elif target.vertex_colors is not None:
        corner = target.vertex_colors.numpy()[target.faces.numpy()[f]]
        out[hit] = (b[:, :, None] * corner).sum(1)
    else:
        uv = (b[:, :, None] * target.uvs.numpy()[f]).sum(1)
        tex = target.texture.numpy()
        rects = target.texture_rects
        r = np.tile([0, 0, *tex.shape[:2]], (len(f), 1)) if rects is None else rects.numpy()[f]
        out[hit] = bilinear_wrap(tex, uv, r)
    return out


def bilinear_wrap(tex, uv, rects):
    r0, c0, h, w = rects.T
    x = uv[:, 0] * w - 0.5
    y = (1 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    tx, ty = (x - x0)[:, None], (y - y0)[:, None]

    def at(yy, xx):
        return tex[np.mod(yy, h) + r0, np.mod(xx, w) + c0]

    top = at(y0, x0) * (1 - tx) + at(y0, x0 + 1) * tx
    bottom = at(y0 + 1, x0) * (1 - tx) + at(y0 + 1, x0 + 1) * tx
    return top * (1 - ty) + bottom * ty


def interior(face: np.ndarray, bary: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Hit pixels whose centre is not within ``margin`` (barycentric) of an edge of its face."""
    return (face >= 0) & (bary.min(-1) > margin)


def away_from_silhouette(face: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood is all hit or all missed."""
    hit = np.pad(face >= 0, 1, mode="edge")
    H, W = face.shape
    windows = [
        hit[1 + di : 1 + di + H, 1 + dj : 1 + dj + W] for di in (-1, 0, 1) for dj in (-1, 0, 1)
    ]
    stack = np.stack(windows)
    return stack.all(0) | (~stack).all(0)


def front_camera(res=32, distance=2.5, fov=49.0):
    return orbit_cameras(0.0, 0.0, distance, fov, res, res)


# ---------------------------------------------------------------------------------------------
# Scenes built in the test


def two_tone_cube(kind: str) -> trimesh.Trimesh:
    """A cube (our Z-up frame) whose -Y side is FRONT and the rest BACK, as face/vertex colours."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.apply_translation((3.0, -2.0, 1.0))  # off-origin, so normalisation has work to do
    if kind == "face":
        normals = cube.face_normals
        fc = np.where((normals[:, 1] < -0.9)[:, None], FRONT, BACK).astype(np.uint8)
        cube.visual.face_colors = fc
    elif kind == "vertex":
        # Unmerge so the front face's corners are all FRONT.
        cube = trimesh.Trimesh(
            cube.vertices[cube.faces].reshape(-1, 3), np.arange(36).reshape(-1, 3), process=False
        )
        normals = np.repeat(cube.face_normals, 3, axis=0)
        cube.visual.vertex_colors = np.where((normals[:, 1] < -0.9)[:, None], FRONT, BACK).astype(
            np.uint8
        )
    elif kind == "material":
        cube.visual = trimesh.visual.TextureVisuals(
            material=trimesh.visual.material.PBRMaterial(baseColorFactor=FRONT)
        )
    return cube


def export_z_up(mesh: trimesh.Trimesh, path) -> None:
    """Write ``mesh`` (our Z-up frame) so that loading it gives it back: Y-up for glTF."""
    mesh = mesh.copy()
    if str(path).endswith((".glb", ".gltf")):
        mesh.apply_transform(Z_UP_TO_Y_UP)
    mesh.export(str(path))


def centre_pixel(target: TargetMesh) -> np.ndarray:
    rgb, alpha = render_mesh(target, front_camera(33), WHITE, supersample=1)
    assert alpha[0, 16, 16, 0] == 1.0
    return rgb[0, 16, 16].numpy()


@pytest.mark.parametrize(
    "ext,kind",
    [
        ("ply", "face"),
        ("ply", "vertex"),
        ("obj", "vertex"),
        ("glb", "vertex"),
        ("glb", "material"),
        ("gltf", "material"),
        ("obj", "material"),
        ("ply", "none"),
    ],
)
def test_load_colour_sources(tmp_path, ext, kind):
    path = tmp_path / f"cube.{ext}"
    export_z_up(two_tone_cube(kind), path)
    target = load_target(path)
    expected = np.array(FRONT[:3]) / 255.0
    if ext in ("glb", "gltf"):
        expected = linear_to_srgb(expected)  # glTF COLOR_0 and baseColorFactor are linear
    if kind == "none":
        expected = np.full(3, 0.5)
    np.testing.assert_allclose(centre_pixel(target), expected, atol=1.5 / 255)
    if kind == "face":
        assert target.colour_source == "face"
    if kind == "vertex":
        assert target.colour_source == "vertex"
        # the back is visible from behind
        back = orbit_cameras(180.0, 0.0, 2.5, 49.0, 33, 33)
        rgb, _ = render_mesh(target, back, WHITE, supersample=1)
        np.testing.assert_allclose(
            rgb[0, 16, 16].numpy(),
            linear_to_srgb(np.array(BACK[:3]) / 255) if ext == "glb" else np.array(BACK[:3]) / 255,
            atol=1.5 / 255,
        )


def test_gltf_srgb_option(tmp_path):
    path = tmp_path / "cube.glb"
    export_z_up(two_tone_cube("material"), path)
    target = load_target(path, gltf_linear_colors=False)
    np.testing.assert_allclose(centre_pixel(target), np.array(FRONT[:3]) / 255, atol=1.5 / 255)


def checker_image(h=8, w=12, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def textured_quad(image: Image.Image, x0=-0.5, uv_scale=1.0, factor=None) -> trimesh.Trimesh:
    """A unit quad in the XZ plane facing -Y (our frame), UV (0,0) bottom-left.

    ``TextureVisuals(image=...)`` alone makes trimesh write baseColorFactor 0.4 (its default OBJ
    Kd) into glTF, which viewers multiply in; a PBR material states the factor explicitly."""
    v = np.array([[x0, 0, -0.5], [x0 + 1, 0, -0.5], [x0 + 1, 0, 0.5], [x0, 0, 0.5]], float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) * uv_scale
    quad = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=image, baseColorFactor=[255, 255, 255, 255] if factor is None else factor
    )
    quad.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return quad


@pytest.mark.parametrize("ext", ["glb", "obj"])
def test_textured_mesh_matches_raycast(tmp_path, ext):
    image = checker_image()
    path = tmp_path / f"quad.{ext}"
    export_z_up(textured_quad(image, uv_scale=1.5), path)  # uv_scale > 1 exercises wrapping
    target = load_target(path)
    assert target.colour_source == "texture"
    np.testing.assert_allclose(target.texture.numpy(), np.asarray(image) / 255.0, atol=1e-6)
    # An oblique view, so perspective-correct interpolation matters.
    cams = orbit_cameras(35.0, 25.0, 2.0, 49.0, 40, 40)
    rgb, alpha = render_mesh(target, cams, WHITE, supersample=1)
    face, bary = raycast(target.vertices.numpy(), target.faces.numpy(), cams)
    ref = reference_colours(target, face, bary)
    inner = interior(face, bary)
    assert inner.sum() > 200
    np.testing.assert_allclose(rgb[0].numpy()[inner], ref[inner], atol=2e-3)


def test_gltf_texture_factor_multiplies_in_linear(tmp_path):
    image = checker_image()
    quad = textured_quad(image, factor=[255, 128, 255, 255])
    export_z_up(quad, tmp_path / "quad.glb")
    target = load_target(tmp_path / "quad.glb")
    src = np.asarray(image) / 255.0
    expect = src.copy()
    expect[..., 1] = linear_to_srgb(srgb_to_linear(src[..., 1]) * 128 / 255)
    np.testing.assert_allclose(target.texture.numpy(), expect, atol=1e-5)
    # trimesh's plain TextureVisuals(image=...) carries its 0.4 default as the factor.
    quad.visual = trimesh.visual.TextureVisuals(uv=quad.visual.uv, image=image)
    export_z_up(quad, tmp_path / "plain.glb")
    plain = load_target(tmp_path / "plain.glb")
    np.testing.assert_allclose(
        plain.texture.numpy(), linear_to_srgb(srgb_to_linear(src) * 102 / 255), atol=1e-5
    )


def test_several_textured_geometries_share_an_atlas(tmp_path):
    images = [checker_image(8, 12, seed=1), checker_image(16, 4, seed=2)]
    scene = trimesh.Scene()
    scene.add_geometry(textured_quad(images[0], x0=-1.2))
    scene.add_geometry(textured_quad(images[1], x0=0.2, uv_scale=2.0))
    plain = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    plain.visual.face_colors = (10, 20, 250, 255)
    plain.apply_translation((0.0, -0.5, 0.8))
    scene.add_geometry(plain)
    target = target_from_scene(scene)
    assert target.colour_source == "texture" and target.texture_rects is not None
    cams = orbit_cameras(20.0, 15.0, 2.2, 60.0, 48, 48)
    rgb, _ = render_mesh(target, cams, WHITE, supersample=1)
    face, bary = raycast(target.vertices.numpy(), target.faces.numpy(), cams)
    inner = interior(face, bary)
    # Reference from the *source* images: which part a face belongs to follows from its place.
    cx = target.to_original(target.vertices[target.faces].mean(1)).numpy()
    hit = np.nonzero(inner)
    expect = np.zeros((len(hit[0]), 3))
    for n, (i, j) in enumerate(zip(*hit, strict=True)):
        f = face[i, j]
        if cx[f, 1] < -0.1:  # the box
            expect[n] = np.array([10, 20, 250]) / 255
            continue
        src = np.asarray(images[0 if cx[f, 0] < -0.2 else 1]) / 255.0
        uv = bary[i, j] @ target.uvs.numpy()[f]
        expect[n] = bilinear_wrap(src, uv[None], np.array([[0, 0, *src.shape[:2]]]))[0]
    assert len(expect) > 150
    np.testing.assert_allclose(rgb[0].numpy()[inner], expect, atol=2e-3)


def test_gltf_y_up_becomes_z_up(tmp_path):
    # An asymmetric tetrahedron written as-is to glTF (Y up) and to PLY (taken as Z up).
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]], float)
    mesh = trimesh.Trimesh(v, [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], process=False)
    mesh.export(str(tmp_path / "t.glb"))
    mesh.export(str(tmp_path / "t.ply"))
    glb, ply = load_target(tmp_path / "t.glb"), load_target(tmp_path / "t.ply")
    expected = v[:, [0, 2, 1]] * [1, -1, 1]  # (x, y, z) -> (x, -z, y)
    np.testing.assert_allclose(glb.to_original(glb.vertices.double()).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(ply.to_original(ply.vertices.double()).numpy(), v, atol=1e-6)


def test_normalisation():
    mesh = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    mesh.apply_translation((10.0, -3.0, 7.0))
    target = target_from_scene(mesh)
    v = target.vertices.double()
    lo, hi = v.min(0).values, v.max(0).values
    torch.testing.assert_close(
        (lo + hi) / 2, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert abs(v.norm(dim=1).max().item() - NORMALISED_RADIUS) < 1e-6
    torch.testing.assert_close(
        target.to_original(v), torch.from_numpy(mesh.vertices), atol=1e-5, rtol=0
    )
    pts = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(target.to_normalised(target.to_original(pts)), pts)
    np.testing.assert_allclose(target.center.numpy(), [10.0, -3.0, 7.0])


def test_errors(tmp_path):
    with pytest.raises(TargetError, match="not found"):
        load_target(tmp_path / "missing.glb")
    (tmp_path / "mesh.fbx").write_bytes(b"x")
    with pytest.raises(TargetError, match="unsupported"):
        load_target(tmp_path / "mesh.fbx")
    (tmp_path / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(TargetError, match="could not read"):
        load_target(tmp_path / "broken.glb")
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(
        str(tmp_path / "points.ply")
    )
    with pytest.raises(TargetError, match="no triangle faces"):
        load_target(tmp_path / "points.ply")
    trimesh.Trimesh(np.ones((3, 3)), [[0, 1, 2]], process=False).export(str(tmp_path / "dot.ply"))
    with pytest.raises(TargetError, match="degenerate"):
        load_target(tmp_path / "dot.ply")
    from stabledreamer.errors import StableDreamerError

    assert issubclass(TargetError, StableDreamerError)  # a user error: one line, not a bug


# ---------------------------------------------------------------------------------------------
# Rasteriser


def small_scene(kind="face") -> TargetMesh:
    """A sphere partly in front of a box: occlusion, silhouettes, many triangles."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.45)
    sphere.apply_translation((0.15, -0.35, 0.1))
    box = trimesh.creation.box(extents=(0.9, 0.5, 0.9))
    box.apply_translation((-0.1, 0.2, -0.1))
    mesh = trimesh.util.concatenate([sphere, box])
    rng = np.random.default_rng(0)
    if kind == "face":
        mesh.visual.face_colors = rng.integers(0, 256, (len(mesh.faces), 4), dtype=np.uint8)
    else:
        mesh.visual.vertex_colors = rng.integers(0, 256, (len(mesh.vertices), 4), dtype=np.uint8)
    return target_from_scene(mesh)


@pytest.mark.parametrize("kind", ["face", "vertex"])
def test_raster_matches_raycast(kind):
    target = small_scene(kind)
    cams = orbit_cameras([30.0, 200.0], [20.0, -15.0], 1.7, 49.0, 56, 48)
    rgb, alpha = render_mesh(target, cams, WHITE, supersample=1)
    for c in range(len(cams)):
        face, bary = raycast(target.vertices.numpy(), target.faces.numpy(), cams, c)
        keep = away_from_silhouette(face)
        agree = (alpha[c, ..., 0].numpy() == 1.0) == (face >= 0)
        assert agree[keep].mean() > 0.98
        assert agree.mean() > 0.97
        inner = interior(face, bary)
        ref = reference_colours(target, face, bary)
        close = np.abs(rgb[c].numpy()[inner] - ref[inner]).max(1) < 2e-3
        assert inner.sum() > 150 and close.mean() > 0.98, (inner.sum(), close.mean())


def test_supersampling_is_a_box_filter_of_the_fine_render():
    target = small_scene()
    cams = orbit_cameras(50.0, 10.0, 2.5, 49.0, 24, 20)
    rgb, alpha = render_mesh(target, cams, torch.tensor([0.2, 0.4, 0.6]), supersample=4)
    fine_rgb, fine_alpha = render_mesh(
        target, cams.resized(96, 80), torch.tensor([0.2, 0.4, 0.6]), supersample=1
    )
    pool = torch.nn.functional.avg_pool2d
    torch.testing.assert_close(alpha, pool(fine_alpha.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1))
    torch.testing.assert_close(rgb, pool(fine_rgb.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1))
    frac = (alpha > 0) & (alpha < 1)
    assert frac.sum() > 10  # anti-aliased silhouette
    assert ((alpha == 0) | (alpha == 1) | frac).all()


def test_occlusion_order():
    red = trimesh.creation.box(extents=(0.6, 0.05, 0.6))
    red.apply_translation((0.0, -0.3, 0.0))  # nearer the front camera (on -Y)
    red.visual.face_colors = (255, 0, 0, 255)
    blue = trimesh.creation.box(extents=(1.2, 0.05, 1.2))
    blue.apply_translation((0.0, 0.3, 0.0))
    blue.visual.face_colors = (0, 0, 255, 255)
    for order in ([red, blue], [blue, red]):  # face order must not matter
        target = target_from_scene(trimesh.util.concatenate(order))
        front = orbit_cameras(0.0, 0.0, 3.0, 40.0, 33, 33)
        back = orbit_cameras(180.0, 0.0, 3.0, 40.0, 33, 33)
        rgb_f, _ = render_mesh(target, front, WHITE, supersample=2)
        rgb_b, _ = render_mesh(target, back, WHITE, supersample=2)
        torch.testing.assert_close(rgb_f[0, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
        torch.testing.assert_close(rgb_b[0, 16, 16], torch.tensor([0.0, 0.0, 1.0]))
        torch.testing.assert_close(rgb_f[0, 16, 10], torch.tensor([0.0, 0.0, 1.0]))  # blue border
        depth = render_mesh_depth(target, front)[0, 16, 16, 0].item()
        red_front_y = target.to_normalised(torch.tensor([0.0, -0.325, 0.0], dtype=torch.float64))
        assert abs(depth - (3.0 + red_front_y[1].item())) < 1e-4  # camera at y = -3


def test_camera_inside_the_scene_clips_at_the_near_plane():
    # A large floor and wall; the camera stands on the floor, so triangles pass behind it.
    floor = trimesh.Trimesh(
        [[-5, -5, -0.5], [5, -5, -0.5], [5, 5, -0.5], [-5, 5, -0.5]], [[0, 1, 2], [0, 2, 3]]
    )
    wall = trimesh.creation.box(extents=(2.0, 0.1, 2.0))
    wall.apply_translation((0.3, 1.5, 0.4))
    mesh = trimesh.util.concatenate([floor, wall])
    mesh.visual.vertex_colors = np.random.default_rng(1).integers(0, 256, (len(mesh.vertices), 4))
    target = target_from_scene(mesh)
    eye = target.to_normalised(torch.tensor([[0.0, -0.5, 0.0]], dtype=torch.float64)).float()
    viewmats = look_at(eye, target=eye[0] + torch.tensor([0.2, 1.0, -0.3]))
    cams = Cameras(viewmats, intrinsics(torch.tensor([90.0]), 48, 36), 48, 36)
    rgb, alpha = render_mesh(target, cams, WHITE, supersample=2)
    assert torch.isfinite(rgb).all() and alpha.mean() > 0.5
    rgb1, alpha1 = render_mesh(target, cams, WHITE, supersample=1)
    face, bary = raycast(target.vertices.numpy(), target.faces.numpy(), cams)
    agree = (alpha1[0, ..., 0].numpy() == 1) == (face >= 0)
    assert agree[away_from_silhouette(face)].mean() > 0.98
    inner = interior(face, bary)
    ref = reference_colours(target, face, bary)
    close = np.abs(rgb1[0].numpy()[inner] - ref[inner]).max(1) < 2e-3
    assert inner.sum() > 150 and close.mean() > 0.98, (inner.sum(), close.mean())
    # Entirely behind the camera: nothing drawn, no error.
    target_only_wall = target_from_scene(wall)
    eye_w = target_only_wall.to_normalised(torch.tensor([[0.0, -0.5, 0.0]], dtype=torch.float64))
    away = look_at(eye_w.float(), target=eye_w[0].float() + torch.tensor([0.0, -1.0, 0.0]))
    _, a = render_mesh(target_only_wall, Cameras(away, cams.Ks, 48, 36), WHITE)
    assert a.sum() == 0


# ---------------------------------------------------------------------------------------------
# The procedural demo target


@pytest.mark.parametrize("ext", ["glb", "ply"])
def test_demo_target_round_trip(tmp_path, ext):
    mesh = demo_target()
    assert 1500 <= len(mesh.faces) <= 4000
    assert np.linalg.norm(mesh.vertices, axis=1).max() <= 1.0
    loaded = load_target(write_demo_target(tmp_path / f"demo.{ext}"))
    ref = demo_target_mesh()
    cams = orbit_cameras([0.0, 90.0, 180.0], 15.0, 2.5, 49.0, 40, 40)
    rgb, alpha = render_mesh(loaded, cams, WHITE, supersample=2)
    rgb_ref, alpha_ref = render_mesh(ref, cams, WHITE, supersample=2)
    torch.testing.assert_close(alpha, alpha_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(rgb, rgb_ref, atol=3 / 255, rtol=0)  # uint8 in linear for glb
    palette = {tuple(np.round(np.array(c) * 255)) for c in COLOURS.values()}
    got = {tuple(c) for c in np.round(loaded.face_colors.numpy() * 255)}
    assert len(got) == len(palette)
    # Front and back differ (eyes and nose on the -Y side only).
    assert (rgb[0] - rgb[2].flip(1)).abs().amax() > 0.5
