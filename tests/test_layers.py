"""The architecture stays readable: imports inside the backend only flow down its layers, the
protocol imports neither torch nor bpy, and the add-on never imports torch.

Layers, top to bottom (a part may import any lower layer and itself, never a higher or equal
one): cli -> server -> doctor -> runs -> presets -> config, memory_tiers -> optim -> guidance,
mesh -> render, targets -> gaussians, cameras, ply -> device -> models -> atomic -> errors,
config_space.
Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "backend" / "stabledreamer"
LAYERS = [
    {"__init__", "errors", "config_space"},
    {"atomic"},
    {"models"},
    {"device"},
    {"gaussians", "cameras", "ply"},
    {"targets", "render"},
    {"mesh", "guidance"},
    {"optim"},
    {"config", "memory_tiers"},
    {"presets"},
    {"runs"},
    {"doctor"},
    {"server"},
    {"cli"},
    {"__main__"},
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    """``stabledreamer.render.dispatch`` -> ``render``; ``stabledreamer`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str):
    """(line, imported module) of every import in a file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            if not node.module:  # `from . import gaussians`: the names are modules
                for a in node.names:
                    yield node.lineno, f"{target}.{a.name}"


def _modules(root: Path, prefix: str):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield path, ".".join([prefix, *parts])


def test_every_backend_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PKG.iterdir()}
    parts = {p for p in parts if not p.startswith((".", "_")) or p in ("__init__", "__main__")}
    parts -= {"csrc"}
    assert parts <= set(LEVEL), f"give these a layer in tests/test_layers.py: {parts - set(LEVEL)}"


def test_backend_imports_flow_down():
    wrong = []
    for path, module in _modules(PKG, "stabledreamer"):
        src = _part(module)
        for line, target in _imports(path, module):
            if not target.startswith("stabledreamer.") and target != "stabledreamer":
                continue
            dst = _part(target)
            if dst in LEVEL and dst != src and LEVEL[dst] >= LEVEL[src]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target} ({dst})")
    assert not wrong, "imports that flow up or sideways:\n" + "\n".join(wrong)


def _top_level_imports(root: Path, prefix: str):
    for path, module in _modules(root, prefix):
        for line, target in _imports(path, module):
            yield path, line, target.split(".")[0]


def test_protocol_imports_neither_torch_nor_bpy():
    bad = [
        f"{p.relative_to(ROOT)}:{line} {top}"
        for p, line, top in _top_level_imports(ROOT / "shared" / "stabledreamer_protocol", "x")
        if top in ("torch", "bpy", "stabledreamer")
    ]
    assert not bad, bad


def test_addon_imports_no_torch():
    bad = [
        f"{p.relative_to(ROOT)}:{line} {top}"
        for p, line, top in _top_level_imports(ROOT / "blender_addon", "x")
        if top in ("torch", "stabledreamer", "gsplat", "diffusers")
    ]
    assert not bad, bad


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The test above could fail: an upward import in a scratch copy of the layout is found."""
    (tmp_path / "stabledreamer" / "render").mkdir(parents=True)
    bad = tmp_path / "stabledreamer" / "render" / "x.py"
    bad.write_text("from ..runs.trainer import Trainer\n")
    found = [t for _, t in _imports(bad, "stabledreamer.render.x")]
    assert found == ["stabledreamer.runs.trainer"]
    assert LEVEL[_part(found[0])] > LEVEL["render"]
