"""The import graph of the package: every module imports alone, no import cycles, and the command-line
modules check their arguments without torch or MONAI (all in this process, no subprocess)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import tdseg_lite

PACKAGE = Path(tdseg_lite.__file__).parent
#: dotted module name below ``tdseg_lite`` -> its file; a subpackage is its ``__init__.py`` ("phantom")
PATHS = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
         for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}
MODULES = sorted(PATHS)
#: lazy (function-level) import pairs that still close a cycle, with who owns them; shrink, never grow
KNOWN_LAZY_CYCLES = {
    frozenset({"text", "reports"}),  # model modules: text.make_text_encoder <-> reports.StructuredReportEncoder
}
#: modules that ``tdseg`` loads before it has checked the arguments: no torch, no MONAI at import time
LIGHT = ("cli", "config", "errors", "checks", "runs", "train_cli", "evaluate", "predict", "utils", "label_cache",
         "nifti_io", "bench", "phantom", "phantom.dataset", "datasets", "datasets.prepare", "datasets.volumes",
         "datasets.download")


def package_module(dotted: str) -> str:
    """The package module that an import of ``tdseg_lite.<dotted>`` loads (its longest known prefix)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in PATHS:
        parts.pop()
    return ".".join(parts)


def parents(module: str) -> list[str]:
    """The subpackages whose ``__init__`` runs before ``module`` does ("phantom" for "phantom.scan")."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def imports(module: str, lazy: bool) -> set[str]:
    """Package modules (and top-level third-party packages) imported by ``module``: at module level, or anywhere."""
    tree = ast.parse(PATHS[module].read_text())
    nodes = ast.walk(tree) if lazy else iter(tree.body)
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and not lazy:  # `if TYPE_CHECKING:` blocks never run
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tdseg_lite" or node.module.startswith("tdseg_lite."):
                base = node.module.removeprefix("tdseg_lite").removeprefix(".")
                for alias in node.names:  # `from tdseg_lite.phantom import scan` imports the module phantom.scan
                    sub = f"{base}.{alias.name}" if base else alias.name
                    out.add(sub if sub in PATHS else package_module(base))
            else:
                out.add("ext:" + node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {package_module(a.name.removeprefix("tdseg_lite.")) if a.name.startswith("tdseg_lite.")
                    else "ext:" + a.name.split(".")[0] for a in node.names}
    return out - {module, ""}


def cycles(lazy: bool) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: imports(m, lazy) & set(MODULES) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for m in MODULES:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_at_module_level() -> None:
    assert cycles(lazy=False) == []


def test_no_import_cycle_even_through_function_level_imports() -> None:
    found = [c for c in cycles(lazy=True) if frozenset(c) not in KNOWN_LAZY_CYCLES]
    assert found == [], f"import cycles (function-level imports included): {found}"


def test_train_cli_and_train_run_do_not_import_each_other() -> None:
    assert "train_cli" not in imports("train_run", lazy=True)
    assert "train_run" not in imports("train_cli", lazy=False)


def test_the_command_modules_are_light_at_import_time() -> None:
    heavy = {"ext:torch", "ext:monai", "ext:transformers", "ext:nibabel", "ext:scipy"}
    for module in LIGHT:
        seen, todo = set(), [module]
        while todo:  # everything this module pulls in at import time, transitively
            m = todo.pop()
            if m in seen or m.startswith("ext:"):
                continue
            seen.add(m)
            todo += [*imports(m, lazy=False), *parents(m)]
        pulled = {d for m in seen if not m.startswith("ext:") for d in imports(m, lazy=False)} & heavy
        assert not pulled, f"{module} imports {sorted(pulled)} at import time (via {sorted(seen)})"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone(module: str) -> None:
    saved = {k: v for k, v in sys.modules.items() if k == "tdseg_lite" or k.startswith("tdseg_lite.")}
    try:
        for key in saved:
            del sys.modules[key]
        importlib.import_module(f"tdseg_lite.{module}")
    finally:
        for key in [k for k in sys.modules if k == "tdseg_lite" or k.startswith("tdseg_lite.")]:
            del sys.modules[key]
        sys.modules.update(saved)
