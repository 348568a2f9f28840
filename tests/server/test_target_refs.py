"""Uploaded meshes that name other files: glTF/GLB references are refused, OBJ material
libraries dropped, whatever form the reference takes."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from stabledreamer.server.submit import self_contained
from stabledreamer_protocol import ProtocolError

OUTSIDE = ["/etc/passwd", "../../etc/passwd", "..\\\\..\\\\secret", "job.json", "file:///etc/shadow",
           "http://example.com/x.bin", "%2e%2e/%2e%2e/etc/passwd", "", 5, None]  # fmt: skip
DATA = "data:application/octet-stream;base64," + base64.b64encode(b"\0" * 12).decode()


def gltf(uri, where: str) -> dict:
    doc = {"asset": {"version": "2.0"}, "buffers": [{"byteLength": 12, "uri": DATA}]}
    if where == "buffers":
        doc["buffers"].append({"byteLength": 12, "uri": uri})
    else:
        doc["images"] = [{"uri": uri}]
    return doc


def glb(doc: dict) -> bytes:
    body = json.dumps(doc).encode()
    body += b" " * (-len(body) % 4)
    return (
        b"glTF"
        + struct.pack("<II", 2, 20 + len(body))
        + struct.pack("<I4s", len(body), b"JSON")
        + body
    )


@pytest.mark.parametrize("uri", OUTSIDE)
@pytest.mark.parametrize("where", ["buffers", "images"])
@pytest.mark.parametrize("fmt", ["gltf", "glb"])
def test_gltf_references_outside_are_refused(uri, where, fmt):
    doc = gltf(uri, where)
    data = glb(doc) if fmt == "glb" else json.dumps(doc).encode()
    with pytest.raises(ProtocolError) as e:
        self_contained(fmt, data)
    assert e.value.code == "unsupported" and ".glb" in e.value.hint


@pytest.mark.parametrize("fmt", ["gltf", "glb"])
def test_embedded_gltf_passes_unchanged(fmt):
    doc = gltf(DATA, "images")
    data = glb(doc) if fmt == "glb" else json.dumps(doc).encode()
    assert self_contained(fmt, data) == data


@pytest.mark.parametrize(
    "line",
    [
        b"mtllib a.mtl",
        b"  MTLLIB ../../etc/passwd",
        b"mtllib /etc/shadow x.mtl",
        b"\tmtllib job.json",
    ],
)
def test_obj_material_libraries_are_dropped(line):
    obj = b"v 0 0 0 1 0 0\n" + line + b"\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    out = self_contained("obj", obj)
    assert b"mtllib" not in out.lower() and out.count(b"\n") == 4 and b"f 1 2 3" in out


def test_other_formats_and_garbage_pass_through():
    for fmt, data in [
        ("ply", b"ply\n..."),
        ("gltf", b"not json"),
        ("glb", b"short"),
        ("obj", b"v 0 0 0\n"),
    ]:
        assert self_contained(fmt, data) == data
