"""The package layout holds: packages named after what they hold, imports that only go down the layers.

    data <- model <- training <- registry <- extract <- cli      (Prefect only in tasks/ and flows/)

Read from the source with `ast`, so a violation fails here before it becomes a tangle.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "docre"
LAYERS = {"data": 0, "model": 1, "training": 2, "registry": 3, "extract": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in `name`, those inside functions included:
    a lazy import that closes a cycle still ties two modules into one. `if TYPE_CHECKING:` blocks are left
    out (annotations only)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if is_package(name) else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{child.module}" if child.module else base) if child.level else child.module
                names = [a.name for a in child.names]
                # `from pkg import submodule` imports the submodule
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
                found.append((target, names, child.lineno))
                found.extend((s, [], child.lineno) for s in subs)
            elif isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno) for a in child.names)
            visit(child)

    visit(tree)
    return found


def test_nothing_but_packages_at_the_top():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert top == ["__init__.py"], f"modules at docre/'s top level: {top}"


@pytest.mark.parametrize("package", sorted(n for n in MODULES if is_package(n)))
def test_every_package_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and len(doc) > 40, f"{package}/__init__.py has no docstring saying what it holds"
    if package != "docre":
        assert "import" in doc.lower(), f"{package}: the docstring does not say what the package may import"


def test_imports_go_down_the_layers_and_never_to_prefect():
    wrong = []
    for name in MODULES:
        layer = name.split(".")[1] if name.count(".") else None
        for target, _, line in imports(name):
            if target.split(".")[0] == "prefect" or target.startswith("prefect_"):
                wrong.append(f"{name}:{line} imports {target} (Prefect belongs in tasks/ and flows/)")
            if layer is None or not target.startswith("docre."):
                continue
            other = target.split(".")[1]
            if other in LAYERS and LAYERS[other] > LAYERS[layer]:
                wrong.append(f"{name}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{name}:{line} imports {n} from {target}"
             for name in MODULES for target, names, line in imports(name)
             if target.startswith("docre") and target != name
             for n in names if n.startswith("_") and not n.startswith("__")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {name: {t for t, _, _ in imports(name) if t in MODULES and t != name}
             for name in MODULES}
    # a package's __init__ re-exporting its own submodules is not a cycle; a submodule importing it back is
    for name in MODULES:
        if is_package(name):
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            walk(name)


def test_the_checks_see_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The checker itself: a planted cycle and a planted private import are found."""
    pkg = tmp_path / "docre"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Top."""\n')
    (pkg / "data" / "__init__.py").write_text('"""Data: may import nothing."""\n')
    (pkg / "data" / "a.py").write_text("from .b import _hidden\n")
    (pkg / "data" / "b.py").write_text("from .a import x\n_hidden = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {module_name(p): p for p in sorted(pkg.rglob("*.py"))})
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="_hidden"):
        test_no_private_name_is_imported_across_modules()
