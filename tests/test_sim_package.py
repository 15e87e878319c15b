"""The simulator is a layer above the kit: sge_sim may import sge, never the reverse,
and its own modules import one another without a cycle.

Why an AST scan and not an import: a cycle or an upward import hides in a function
body or an ``if TYPE_CHECKING:`` block and only shows when that code runs or the
checker reads it; the scan sees every import statement wherever it is.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "sge"
SIM = REPO / "sim" / "sge_sim"


def module_name(path, root, package):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package,) + parts)


def modules(root, package):
    """{dotted name: path} of every module of the package at root."""
    return {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


def imports(path, name, submodules=()):
    """Every module an import statement in the file names, resolved to absolute names.

    ``from m import x`` names m.x when that is one of ``submodules``, and m unless
    every x is (``from . import peers`` needs the package only as peers' parent,
    which no scan counts: the package's own imports would make every such line
    look like a cycle)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & set(submodules)
            out |= subs
            if len(subs) < len(node.names):
                out.add(mod)
    return out


def graph(root, package):
    """Import edges between the package's own modules."""
    mods = modules(root, package)
    return {m: sorted(d for d in imports(p, m, mods) if d in mods and d != m)
            for m, p in mods.items()}


def cycle(edges):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in edges[m]:
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d, stack)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def test_the_kit_never_imports_the_simulator():
    bad = sorted(f"{m}: {d}" for m, p in modules(KIT, "sge").items()
                 for d in imports(p, m) if d == "sge_sim" or d.startswith("sge_sim."))
    assert bad == []


def test_the_kit_holds_no_simulator():
    assert not (KIT / "sim").exists()


def test_the_simulator_imports_without_a_cycle():
    edges = graph(SIM, "sge_sim")
    assert "sge_sim.engine" in edges and "sge_sim.peers" in edges
    assert cycle(edges) is None


def test_the_scan_sees_imports_in_functions_and_type_checking_blocks(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from .b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("def g():\n    import p.a\n")
    assert graph(pkg, "p") == {"p": [], "p.a": ["p.b"], "p.b": ["p.c"], "p.c": ["p.a"]}
    assert cycle(graph(pkg, "p")) == ["p.a", "p.b", "p.c", "p.a"]
    (pkg / "c.py").write_text("def g():\n    import sge_sim.engine\n")
    assert "sge_sim.engine" in imports(pkg / "c.py", "p.c")
