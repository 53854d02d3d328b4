"""The package's layers, checked on its source: imports only point down, no import cycles, and
the light commands load no torch.

Layers, bottom to top: `core` (essays, metric, config rules, records), `ner` (the tagger),
`decoders` (probabilities -> spans, the registry), `run` (config, pipeline, steps, reports),
`app` (labeller, feedback, serve, export, info, cli). `launch` (child processes, torchrun
ranks) stands beside them: every layer may use it, and it uses only `core`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "discourse_rl"
LAYERS = ("core", "ner", "decoders", "run", "app")
BESIDE = "launch"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str) -> str:
    """`target` as a module of the package (a name imported from a module: that module)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(
        node.test
    )


def _imports(path: Path) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, where: 'module' | 'function' | 'types') for every import of the
    package in `path`."""
    module = _module(path)
    is_package = path.name == "__init__.py"

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, where: str) -> Iterator[tuple[str, int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                yield from visit(child, "types")
                continue
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "function" if where == "module" else where
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("discourse_rl"):
                        yield _resolve(alias.name), child.lineno, inner
            elif isinstance(child, ast.ImportFrom):
                base = absolute(child)
                if base.startswith("discourse_rl"):
                    for alias in child.names:
                        yield _resolve(f"{base}.{alias.name}"), child.lineno, inner
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(encoding="utf-8")), "module")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*LAYERS, BESIDE) else None


def test_imports_point_down() -> None:
    wrong = []
    for module, path in MODULES.items():
        mine = _layer(module)
        for target, line, _ in _imports(path):
            theirs = _layer(target)
            if mine is None or theirs is None or mine == theirs:
                continue  # the package's root (version, lazy `Labeller`) and within a layer
            if theirs == BESIDE:
                continue  # every layer may start processes
            ok = theirs == "core" if mine == BESIDE else LAYERS.index(theirs) < LAYERS.index(mine)
            if not ok:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {mine} imports {theirs} ({target})")
    assert not wrong, "imports pointing up:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles() -> None:
    """Every import the code runs (at module level or in a function; not those for type
    checking only), between modules: no cycle. A package's own `__init__` importing its
    submodules is the package's shape, not a cycle, so a module's edge to a package it sits in
    is left out."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for target, _, where in _imports(path):
            if where == "types" or target == module or module.startswith(target + "."):
                continue
            graph.setdefault(module, set()).add(target)
    assert _cycles(graph) == []


def test_function_level_imports_say_why() -> None:
    """An import inside a function is for a heavy dependency kept out of light commands (or a
    module loaded only when needed); a comment on its group of imports, or the line above,
    says why."""
    silent = []
    for path in MODULES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            group: list[ast.stmt] = []
            for node in [*fn.body, None]:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    group.append(node)
                    continue
                if group:
                    first, last = group[0].lineno, group[-1].end_lineno or group[-1].lineno
                    above = lines[first - 2].strip().startswith("#")
                    if not above and not any("#" in line for line in lines[first - 1 : last]):
                        silent.append(f"{path.relative_to(SRC)}:{first}")
                group = []
    assert not silent, "imports in functions without a reason:\n" + "\n".join(silent)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["info", "--help"], ["score", "--help"], ["predict", "--help"]],
)
def test_light_commands_load_no_torch(argv: list[str]) -> None:
    code = (
        "import sys\nfrom discourse_rl.app.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent
    )
    assert "TORCH False" in out.stdout


def test_info_on_a_run_folder_and_score_load_no_torch(tmp_path: Path) -> None:
    from tests.tiny_run import make_tiny_run

    run = make_tiny_run(tmp_path)
    gt = tmp_path / "gt.csv"
    gt.write_text("id,discourse_type,predictionstring\nA,Lead,0 1 2\n", encoding="utf-8")
    pred = tmp_path / "pred.csv"
    pred.write_text("id,class,predictionstring\nA,Lead,0 1 2\n", encoding="utf-8")
    code = (
        "import sys\nfrom discourse_rl.app.cli import main\n"
        f"assert main(['info', '--model', {str(run)!r}, '--json']) == 0\n"
        f"assert main(['score', '--pred', {str(pred)!r}, '--gt', {str(gt)!r}]) == 0\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent
    )
    assert "TORCH False" in out.stdout and '"stage": "ner-naive"' in out.stdout
