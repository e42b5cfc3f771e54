"""The house's layout: imports run one way (studies and scripts -> embedded -> the library), the
library has no import cycle, and the method stays small and free of instrumentation."""
import ast
from pathlib import Path

from conftest import REPO

METHOD = ("prototypes", "features", "guidance", "sampler")


def imports(path, top_level_only=False):
    """Module names a file imports (absolute imports; function-level ones unless top_level_only)."""
    tree = ast.parse(Path(path).read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_files(package):
    return sorted((REPO / package).glob("*.py"))


def test_imports_run_one_way():
    for package, forbidden in (("distdiff", ("embedded", "studies", "scripts")), ("embedded", ("studies", "scripts")),
                               ("models", ("distdiff", "embedded", "studies", "scripts"))):
        for path in package_files(package):
            bad = sorted(name for name in imports(path) if name.split(".")[0] in forbidden)
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_library_has_no_import_cycle():
    modules = {p.stem: p for p in package_files("distdiff")}
    graph = {name: {m.split(".")[1] for m in imports(path, top_level_only=True)
                    if m.startswith("distdiff.") and m.split(".")[1] in modules} - {name}
             for name, path in modules.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = "done"
    for name in sorted(graph):
        visit(name, [])


def test_the_method_is_four_small_files_without_timing_or_recording():
    lines = {name: len((REPO / "distdiff" / f"{name}.py").read_text().splitlines()) for name in METHOD}
    assert sum(lines.values()) <= 520, lines  # the "about 500"
    for name in METHOD:
        used = imports(REPO / "distdiff" / f"{name}.py")
        assert not {"time", "distdiff.timing", "distdiff.expansion"} & used, (name, used)
