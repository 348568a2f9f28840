"""The 34-byte preview encoding: layout, byte count, accuracy, sanitising, capping."""

from __future__ import annotations

import numpy as np
import pytest
from protocol_samples import gaussians

from stabledreamer_protocol import Preview, decode, encode
from stabledreamer_protocol import preview as pv


def test_layout_is_34_bytes_per_gaussian():
    assert pv.BYTES_PER_GAUSSIAN == 34
    n = 10_000
    position, attributes = pv.pack(**gaussians(n))
    assert position.dtype == np.dtype("<f4") and position.shape == (n, 3)
    assert attributes.dtype == np.dtype("<f2") and attributes.shape == (n, 11)
    assert position.nbytes + attributes.nbytes == 34 * n == pv.nbytes(n)
    frames = encode(Preview(job="j", position=position, attributes=attributes))
    wire = sum(memoryview(f).nbytes for f in frames)
    assert 34 * n < wire < 34 * n + 400  # the JSON header is the only overhead


def test_pack_unpack_accuracy():
    g = gaussians(5000, seed=3)
    out = pv.unpack(*pv.pack(**g))
    np.testing.assert_array_equal(out["means"], g["means"])  # float32, exact
    np.testing.assert_allclose(out["log_scales"], g["log_scales"], atol=4e-3, rtol=0)
    np.testing.assert_allclose(out["scales"], np.exp(g["log_scales"]), rtol=4e-3)
    q = g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True)
    np.testing.assert_allclose(out["quats"], q, atol=5e-4)
    np.testing.assert_allclose(out["rgb"], g["rgb"], atol=5e-4)
    np.testing.assert_allclose(out["opacities"], g["opacities"], atol=5e-4)
    assert all(a.dtype == np.float32 for a in out.values())


def test_a_viewport_decode_skips_the_log_scales_and_keeps_colour_and_opacity_together():
    position, attributes = pv.pack(**gaussians(2000, seed=5))
    full = pv.unpack(position, attributes)
    lean = pv.unpack(position, attributes, log_scales=False)
    assert "log_scales" not in lean and set(full) - set(lean) == {"log_scales"}
    for name, a in lean.items():
        np.testing.assert_array_equal(a, full[name])
    rgba = lean["rgba"]
    assert rgba.shape == (2000, 4) and rgba.flags.c_contiguous
    np.testing.assert_array_equal(rgba[:, :3], lean["rgb"])
    np.testing.assert_array_equal(rgba[:, 3], lean["opacities"])
    # the float32 path (attributes not float16) decodes the same way
    wide = pv.unpack(position, attributes.astype(np.float32), log_scales=False)
    for name, a in wide.items():
        np.testing.assert_array_equal(a, lean[name])


def test_round_trip_through_the_wire():
    g = gaussians(100)
    msg = Preview.from_gaussians("job", **g, step=7, stage="stage2")
    back = decode(encode(msg))
    assert back.count == 100 and back.total_gaussians == 100 and back.step == 7
    np.testing.assert_array_equal(back.gaussians()["means"], g["means"])


def test_non_finite_inputs_never_reach_the_wire():
    g = gaussians(4)
    g["means"][0, 1] = np.nan
    g["log_scales"][1] = [np.inf, -np.inf, np.nan]
    g["quats"][2] = 0.0
    g["rgb"][3] = [np.nan, 2.0, -1.0]
    g["opacities"][3] = np.nan
    position, attributes = pv.pack(**g)
    assert np.isfinite(position).all() and np.isfinite(attributes).all()
    out = pv.unpack(position, attributes)
    assert out["opacities"][0] == 0.0  # bad position: hidden
    np.testing.assert_array_equal(out["quats"][2], [1, 0, 0, 0])
    np.testing.assert_array_equal(out["rgb"][3], [0, 1, 0])
    assert out["log_scales"][1].min() >= pv.LOG_SCALE_RANGE[0]


def test_max_points_keeps_the_most_opaque_in_order():
    g = gaussians(1000)
    position, attributes = pv.pack(**g, max_points=100)
    assert position.shape == (100, 3)
    keep = np.sort(np.argsort(-g["opacities"])[:100])
    np.testing.assert_array_equal(position, g["means"][keep])
    assert pv.pack(**g, max_points=0)[0].shape == (0, 3)
    msg = Preview.from_gaussians("j", **g, max_points=10)
    assert msg.count == 10 and msg.total_gaussians == 1000


def test_opacity_may_be_a_column():
    g = gaussians(10)
    g["opacities"] = g["opacities"][:, None]
    assert pv.pack(**g)[1].shape == (10, 11)


def test_shape_errors_are_clear():
    g = gaussians(10)
    g["quats"] = g["quats"][:, :3]
    with pytest.raises(ValueError, match="quats"):
        pv.pack(**g)
    with pytest.raises(ValueError):
        pv.unpack(np.zeros((3, 3), np.float32), np.zeros((2, 11), np.float16))
