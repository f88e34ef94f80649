"""The package tree follows the data flow: every module belongs to a layer, imports only from its
own layer or lower ones, and no modules import each other in a circle. Imports are read from the
source (lazy imports inside functions included), and importing ``a.b.c`` counts as importing the
package ``a.b`` too, because Python runs its ``__init__`` first."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("polyact", "he_backend")

# bottom to top: a module may import from its own layer and the layers before it
LAYERS: list[tuple[str, ...]] = [
    ("polyact.data", "polyact.threads"),         # data sets; torch / BLAS thread choice (no polyact imports)
    ("polyact.activations",),                    # the zoo: what users' networks contain
    ("polyact.approx",),                         # polynomials that approximate the zoo
    ("polyact.nn", "polyact.models"),            # modules of a PANN; the reference models
    ("polyact.ir",),                             # a PANN as sparse affine maps and polynomials
    ("polyact.convert",),                        # model -> PANN
    ("polyact.train",),                          # robust fine-tuning, allocation
    ("polyact.tradeoff", "polyact.plots"),       # measurement
    ("polyact.tuning",),                         # the cheapest PANN within an accuracy budget
    ("he_backend.eval",),                        # CKKS engine and the steps it runs
    ("he_backend.protocol",),                    # plan, keys, client, server, refresh rounds
    ("he_backend.lowering",),                    # PANN graph -> plan
    ("he_backend.service",),                     # HTTP service and remote client
    ("he_backend",),                             # the package's public names
    ("polyact.cli", "polyact.__main__"),         # the command, over both packages
    ("polyact",),                                # the package's public names (lazy)
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules and packages it imports (within ``packages``)."""
    files = {module_name(p, root): p for top in packages for p in sorted((root / top).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                bases = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for base in bases:
                parts = base.split(".")
                if parts[0] not in packages:
                    continue
                while parts and ".".join(parts) not in files:
                    parts.pop()  # an attribute of a module, not a module
                # the subpackages above run their __init__ first; the top package's own __init__
                # counts only when imported by name (polyact's is lazy and imports nothing)
                for end in range(min(2, len(parts)), len(parts) + 1):
                    target = ".".join(parts[:end])
                    if target != name and not (own_package == target or own_package.startswith(target + ".")):
                        targets.add(target)
        graph[name] = targets
    return graph


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int | None:
    """The index of the layer whose longest prefix names ``module``."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    return [f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
            for a, targets in sorted(graph.items()) for b in sorted(targets)
            if layer_of(b, layers) > layer_of(a, layers)]


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, PACKAGES)


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m, LAYERS) is None] == []


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph, LAYERS) == []


def test_the_graph_sees_lazy_relative_and_package_imports(graph):
    assert "polyact.approx.schedule" in graph["polyact.train.allocate"]  # from ..approx.schedule import
    assert "polyact.approx" in graph["polyact.train.allocate"]  # the package's __init__ runs first
    assert "he_backend.protocol.server" in graph["he_backend.protocol.profile"]  # inside a function
    assert "polyact.activations.elementwise" in graph["polyact.convert.tracing"]  # from ..activations import elementwise


def _write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_a_planted_circle_and_an_upward_import_are_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "from . import b\n",
        "pkg/low/b.py": "def f():\n    from .a import g  # lazy: still a circle\n",
        "pkg/high/__init__.py": "",
        "pkg/high/c.py": "from ..low.a import x\n",
        "pkg/low/d.py": "from pkg.high import c\n",
    })
    planted = import_graph(tmp_path, ("pkg",))
    layers = [("pkg.low",), ("pkg.high",), ("pkg",)]
    assert circles(planted) == [["pkg.low.a", "pkg.low.b"]]
    assert upward_imports(planted, layers) == [
        "pkg.low.d (layer 0) imports pkg.high (layer 1)", "pkg.low.d (layer 0) imports pkg.high.c (layer 1)"]
    assert planted["pkg.high.c"] == {"pkg.low", "pkg.low.a"}


def test_no_module_is_over_500_lines_without_a_reason():
    long = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            text = path.read_text()
            doc = ast.get_docstring(ast.parse(text)) or ""
            if len(text.splitlines()) > 500 and "over 500 lines because" not in doc:
                long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
    assert long == []
