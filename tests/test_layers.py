"""Layers that point one way: the library never imports the toy world (toy/ is a consumer, like any user; only the
entry points cli.py and train.py may use it), and diffalign's modules import each other without a circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffalign"
TOY_USERS = {PACKAGE / "cli.py", PACKAGE / "train.py"}  # the entry points; toy/ itself is a consumer


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _at_import(node: ast.AST):
    """The statements that run when the module is imported: all but the bodies of functions."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _at_import(child)


def _imports(module: str, path: Path, modules: dict[str, Path], module_level_only: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of each import in the file; relative imports resolved against ``module``, and
    ``from x import y`` named x.y where y is a module, else x."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in _at_import(tree) if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            out += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base) for a in node.names]
    return out


def test_the_library_never_imports_the_toy_world():
    toy = PACKAGE / "toy"
    modules = _modules()
    offenders = sorted({f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
                        for module, path in modules.items() if toy not in path.parents and path not in TOY_USERS
                        for line, name in _imports(module, path, modules, module_level_only=False)
                        if name == "diffalign.toy" or name.startswith("diffalign.toy.")})
    assert not offenders, "the library imports the toy world (move the generic piece into the library):\n" + \
        "\n".join(offenders)


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (when imported, or also inside its functions); a name inside a
    module counts as the module."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for _, name in _imports(module, path, modules, module_level_only):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    done, path = set(), []
    on_path: dict[str, int] = {}

    def visit(node: str) -> list[str] | None:
        on_path[node] = len(path)
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return path[on_path[nxt]:] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        path.pop()
        del on_path[node]
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_imports_without_a_circle():
    cycle = _find_cycle(_graph(module_level_only=True))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_circle_hides_in_a_function_level_import():
    """A function-level import only postpones a circle: the shared piece belongs in a module both sides import."""
    cycle = _find_cycle(_graph(module_level_only=False))
    assert cycle is None, "import circle (through a function-level import): " + " -> ".join(cycle)


def test_the_circle_finder_finds_a_circle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
