"""The shape of the code: stages import only stages before them, and no module grows past the
size where it should be split (STYLE.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "layerfilm"

# Data flows down this list; a module may import only modules above it.
ORDER = ["__init__", "_kernels", "_draw_kernels", "_plane_kernels", "errors", "atomic", "untrusted",
         "progress", "config", "checkpoints", "extract", "plan", "clouds", "pca", "project", "cache",
         "cluster", "drift", "layouts", "interpolate", "raster",
         "shade", "text", "compose", "overlays", "cues", "stats", "frames", "encode", "stills",
         "manifest", "publish", "pipeline", "describe", "cli", "warmup",
         "__main__"]


def _unit(path: Path) -> str:
    """The top-level unit a file belongs to (a module, or a subpackage as a whole)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for layerfilm/x.py, 1 for layerfilm/pkg/x.py
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("layerfilm."):
                    out.add(node.module.split(".")[1])
                continue
            up = node.level - 1  # how many packages above this file's own
            if up < depth:
                continue  # inside its own subpackage
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("layerfilm."))
    return out


def test_every_module_is_placed():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(ORDER), units - set(ORDER)


def test_nothing_imports_upward():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        me = _unit(path)
        for other in _imports(path) - {me}:
            if other in ORDER and ORDER.index(other) > ORDER.index(me) and other != "__init__":
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, wrong


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_render_only_composes_in_under_60_lines():
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    render = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "render")
    assert render.end_lineno - render.lineno + 1 < 60
