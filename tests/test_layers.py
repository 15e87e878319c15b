"""One-way layers: every import in `sge/` points to its own layer or a lower one, and no
chain of imports comes back to where it started.

The graph is read from the source (ast), not from sys.modules, so it holds every
import a module can make: the lazy ones inside functions count as much as those at the
top, because a cycle through a lazy import is still a cycle (it only waits for the
first call to bite). Imports under `if TYPE_CHECKING:` are left out: they never run,
they only feed the type checker.
"""
from __future__ import annotations

import ast
import os
from collections import defaultdict

import pytest

from tests.support.common import ROOT

# Lowest first; a module may import its own layer or a lower one. A name ending in `.*`
# covers the package's submodules (list the package itself as well). Every module
# under sge/ must be placed here: a new one is put in its layer on purpose.
LAYERS = [
    # base: pure helpers and formats every other part uses; they import nothing above.
    ("base", ["sge", "sge.errors", "sge.units", "sge.names", "sge.fsutil", "sge.rootenv",
              "sge.imageformat", "sge.runtimes", "sge.eviction", "sge.tempfiles",
              "sge.peerplan"]),
    # fetch/sink/config: reading the settings and moving bytes, with no cache policy.
    ("fetch", ["sge.sink", "sge.fetch", "sge.fetch.*", "sge.config"]),
    # core: the node cache and staging, usable without any cluster.
    ("core", ["sge.log", "sge.cache", "sge.claims", "sge.stage", "sge.security",
              "sge.metrics", "sge.metrics.*"]),
    # cluster: what the agent and the hooks both need of the cluster (hosts, hook args).
    ("cluster", ["sge.cluster", "sge.cluster.*"]),
    # agent: the node agent; it knows the cluster through sge.cluster, not Grid Engine.
    ("agent", ["sge.agent", "sge.agent.*"]),
    # ge: the Grid Engine hooks and admin commands, free to use everything below.
    ("ge", ["sge.ge", "sge.ge.*"]),
    # cli: the command line entry; nothing imports it.
    ("cli", ["sge.cli"]),
]

# Top-level names no module of the kit may import: the simulator and its numpy are a
# separate package, and tests/ and bench/ are not shipped.
FORBIDDEN = ("sge_sim", "numpy", "tests", "bench")

PACKAGE = "sge"


def layer_of(module):
    """Index into LAYERS, or None for a module no layer names."""
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if module == n or (n.endswith(".*") and module.startswith(n[:-1])):
                return i
    return None


def modules(root=ROOT, package=PACKAGE):
    """{dotted name: (path relative to root, is a package)} of every module in the
    package (sge/ unless told)."""
    found = {}
    for d, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, f), root)
            parts = rel[:-3].split(os.sep)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            found[".".join(parts)] = (rel, is_pkg)
    return found


def _is_type_checking(test):
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _literal_import(call):
    """The module of `importlib.import_module("x")` / `__import__("x")` with a literal
    name, else None. Computed names (the fetch registry's `f"{__name__}.{name}"`) cannot
    be read statically; they stay inside their own package."""
    f = call.func
    named = ((isinstance(f, ast.Name) and f.id in ("__import__", "import_module"))
             or (isinstance(f, ast.Attribute) and f.attr == "import_module"))
    if named and call.args and isinstance(call.args[0], ast.Constant) \
            and isinstance(call.args[0].value, str) \
            and not (len(call.args) > 1 or call.keywords):  # a relative import_module
        return call.args[0].value
    return None


def _imports(tree):
    """(target spec, line) of every import that can run: ("abs", name) for `import x`,
    ("from", level, module, [names]) for `from ... import ...`."""
    out = []

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            # type-only imports: never executed, so neither a layer arrow nor a cycle
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((("abs", a.name), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            out.append((("from", node.level, node.module, [a.name for a in node.names]),
                        node.lineno))
        elif isinstance(node, ast.Call):
            name = _literal_import(node)
            if name:
                out.append((("abs", name), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _resolve(spec, module, is_pkg, known):
    """Dotted names the import loads: the module named, and for `from X import n` also
    X.n when that is a module of its own."""
    if spec[0] == "abs":
        return [spec[1]]
    _, level, mod, names = spec
    if level:
        package = module if is_pkg else module.rpartition(".")[0]
        base = package.split(".")
        base = base[:len(base) - (level - 1)]
        target = ".".join(base + ([mod] if mod else []))
    else:
        target = mod
    out = [target]
    for n in names:
        if f"{target}.{n}" in known:
            out.append(f"{target}.{n}")
    return out


def graph(root=ROOT, package=PACKAGE):
    """[(importer, imported, "file:line")] over every module of the package, imported
    names outside it included (the forbidden-import test reads those)."""
    known = modules(root, package)
    edges = []
    for module, (rel, is_pkg) in sorted(known.items()):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            tree = ast.parse(f.read(), rel)
        for spec, line in _imports(tree):
            for target in _resolve(spec, module, is_pkg, known):
                if target != module:
                    edges.append((module, target, f"{rel}:{line}"))
    return edges


def _internal(edges):
    return [(a, b, where) for a, b, where in edges
            if b == PACKAGE or b.startswith(PACKAGE + ".")]


def _fmt(edges):
    return "\n".join(f"  {a} -> {b} ({where})" for a, b, where in sorted(set(edges)))


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    if unplaced:
        pytest.fail("modules in no layer (place each in LAYERS at the top of "
                    "tests/test_layers.py):\n" + "\n".join(f"  {m}" for m in unplaced),
                    pytrace=False)


def test_imports_point_down():
    up = []
    for a, b, where in _internal(graph()):
        la, lb = layer_of(a), layer_of(b)
        if la is not None and lb is not None and lb > la:
            up.append((a, b, f"{where}; {LAYERS[la][0]} -> {LAYERS[lb][0]}"))
        elif lb is None and la is not None:
            up.append((a, b, f"{where}; into a module in no layer"))
    if up:
        pytest.fail("imports that go up a layer:\n" + _fmt(up), pytrace=False)


def _cycles(edges):
    """Strongly connected components of more than one module (Tarjan), each as one
    concrete cycle through its modules: [[(a, b, where), ...], ...]."""
    succ = defaultdict(dict)
    for a, b, where in edges:
        succ[a].setdefault(b, where)
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):  # recursion depth is bounded by the module count
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(scc)

    for v in sorted({a for a, _, _ in edges} | {b for _, b, _ in edges}):
        if v not in index:
            strong(v)
    cycles = []
    for scc in sccs:
        # the shortest way from the component's first module back to itself
        start = min(scc)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [w for v in frontier for w in succ[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(succ[v]):
                    if w in scc and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = min(v for v in frontier if start in succ[v])
        path = [last]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        path.reverse()
        path.append(start)
        cycles.append((sorted(scc), [(a, b, succ[a][b]) for a, b in zip(path, path[1:])]))
    return cycles


def test_no_import_cycles():
    found = _cycles(_internal(graph()))
    msg = []
    for scc, cycle in sorted(found):
        msg.append(f"cycle among {', '.join(scc)}:\n" + "\n".join(
            f"  {a} -> {b} ({where})" for a, b, where in cycle))
    if found:
        pytest.fail("import cycles (lazy imports included):\n" + "\n".join(msg), pytrace=False)


def test_no_simulator_numpy_or_test_code_in_the_kit():
    bad = [(a, b, where) for a, b, where in graph() if b.split(".")[0] in FORBIDDEN]
    if bad:
        pytest.fail("sge imports what the kit does not ship:\n" + _fmt(bad), pytrace=False)


def test_the_reader_itself(tmp_path):
    """On a package made for the purpose: lazy and relative imports are edges, a
    submodule named in `from . import` is one, a TYPE_CHECKING import is not, and a
    cycle is found whatever its length."""
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": ("TYPE_CHECKING = False\n"
                 "if TYPE_CHECKING:\n    from . import c\nelse:\n    import os\n"
                 "def f():\n    from .sub import leaf\n"),
        "b.py": "from . import a\n",
        "c.py": "import p.b\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from .. import c as _c\nimport numpy\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges = {(a, b) for a, b, _ in graph(str(tmp_path), "p")}
    assert edges == {("p.a", "os"), ("p.a", "p.sub"), ("p.a", "p.sub.leaf"),
                     ("p.b", "p"), ("p.b", "p.a"), ("p.c", "p.b"),
                     ("p.sub.leaf", "p"), ("p.sub.leaf", "p.c"), ("p.sub.leaf", "numpy")}
    [(scc, cycle)] = _cycles([e for e in graph(str(tmp_path), "p") if e[1].startswith("p")])
    assert scc == ["p.a", "p.b", "p.c", "p.sub.leaf"]
    assert [(a, b) for a, b, _ in cycle] == [("p.a", "p.sub.leaf"), ("p.sub.leaf", "p.c"),
                                             ("p.c", "p.b"), ("p.b", "p.a")]
    assert dict((b, w) for a, b, w in cycle)["p.a"] == os.path.join("p", "b.py") + ":1"
