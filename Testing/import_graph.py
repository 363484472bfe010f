"""The import graph of the three packages, read from their source (every import: top level, inside functions and
under ``TYPE_CHECKING``), for the layout tests (``test_layout.py``)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
PACKAGE_ROOTS = {
    "OrganGuidanceLib": REPO / "OrganGuidance" / "OrganGuidanceLib",
    "CRCSegmentationLib": REPO / "CRCSegmentation" / "CRCSegmentationLib",
    "CRCTraining": REPO / "Training" / "CRCTraining",
}


@dataclass
class Module:
    name: str  # dotted
    path: Path
    is_package: bool
    tree: ast.Module
    imports: List[Tuple[str, Optional[str], int]] = field(default_factory=list)  # (module, name, line)


def _module_name(package: str, root: Path, path: Path) -> Tuple[str, bool]:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _absolute(module: Optional[str], level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def read_modules() -> Dict[str, Module]:
    modules: Dict[str, Module] = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            name, is_package = _module_name(package, root, path)
            tree = ast.parse(path.read_text(), str(path))
            module = Module(name, path, is_package, tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    module.imports.extend((alias.name, None, node.lineno) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    target = _absolute(node.module, node.level, name, is_package)
                    module.imports.extend((target, alias.name, node.lineno) for alias in node.names)
            modules[name] = module
    return modules


def edges(modules: Dict[str, Module]) -> Iterator[Tuple[str, str, Optional[str], int]]:
    """(importer, imported module, imported name or None, line) for imports of the three packages' modules."""
    for module in modules.values():
        for target, name, line in module.imports:
            if name is not None and f"{target}.{name}" in modules:
                yield module.name, f"{target}.{name}", None, line
            elif target in modules:
                yield module.name, target, name, line


def strongly_connected(modules: Dict[str, Module]) -> List[Set[str]]:
    """Tarjan's algorithm over the module graph; components of more than one module are import cycles."""
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for importer, imported, _, _ in edges(modules):
        if importer != imported:
            graph[importer].add(imported)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (a few hundred)
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for name in graph:
        if name not in index:
            visit(name)
    return components
