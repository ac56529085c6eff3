"""The shape of the code: stages import only stages before them, and no module grows past the
size where it should be split (STYLE.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "layerfilm"

# Data flows down this list; a module may import only modules above it.
ORDER = ["__init__", "_kernels", "_read_kernels", "_draw_kernels", "_shade_kernels", "_span_kernels", "_plane_kernels", "errors", "atomic", "untrusted",
         "progress", "config", "checkpoints", "extract", "plan", "completions", "activations", "clouds", "pca", "project", "cache",
         "cluster", "drift", "layouts", "interpolate", "raster",
         "shade", "text", "grid", "compose", "overlays", "cues", "stats", "header", "film", "encode", "stills", "_viewer_page", "viewer",
         "manifest", "publish", "pipeline", "watch", "info", "cli", "integrations", "warmup",
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


def _module_name(path: Path) -> str:
    """`layerfilm.checkpoints.formats` for formats/__init__.py, `layerfilm.cache` for cache.py."""
    parts = ("layerfilm",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Every layerfilm module → the layerfilm modules it imports, at any depth of the file (inside
    functions too), relative imports resolved; `from pkg import name` points at the submodule
    `pkg.name` when there is one, else at `pkg` itself."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for me, path in files.items():
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import layerfilm.x.y` of a name, not a module
                    target = target.rpartition(".")[0]
                if target and target != me:
                    edges.add(target)
        graph[me] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles covering every module that sits on one (Tarjan's strongly connected groups, then the
    shortest way round through each of their modules)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles, covered = [], set()
    for group in groups:
        for start in sorted(group):  # the shortest way round through each module not yet shown
            if start in covered:
                continue
            paths, seen = [[start]], {start}
            while paths:
                path = paths.pop(0)
                nxt = sorted(w for w in graph[path[-1]] if w in group)
                if start in nxt:
                    cycles.append(path + [start])
                    covered.update(path)
                    break
                for w in nxt:
                    if w not in seen:
                        seen.add(w)
                        paths.append(path + [w])
    return cycles


def test_no_import_cycles_anywhere():
    """Inside subpackages and inside functions too: a function-level import hides a circle from
    the interpreter, not from the design."""
    cycles = _cycles(_module_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_render_only_composes_in_under_60_lines():
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    render = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "render")
    assert render.end_lineno - render.lineno + 1 < 60
