"""Guards the package's layout: imports point down the layers, no import cycle, rooms of a
readable size (a module of at most 400 lines, a class of at most 200)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "builder"
# lower layers never import higher ones; a layer may import its own modules and any below it
LAYERS = [
    ("base", ("builder", "builder.errors", "builder.config", "builder.prompts", "builder.run",
              "builder.embedded", "builder.facts", "builder.numerals")),
    ("data", ("builder.data",)),
    ("answering", ("builder.answering",)),
    ("training", ("builder.training",)),
    ("evaluation", ("builder.evaluation",)),
    ("deploy", ("builder.deploy",)),
    ("owner", ("builder.owner",)),  # the conversation log, the inbox, the charts
    ("doors", ("builder.doors", "builder.cli", "builder.__main__")),
]
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 200


def parse(text: str, tries: int = 5) -> ast.Module:
    """ast.parse, tried again on CPython 3.11's "AST constructor recursion depth mismatch": its
    ast module keeps one recursion count per interpreter, which a parse in another thread
    (a library in a test's server thread that outlived its test) can throw off meanwhile."""
    for attempt in range(tries):
        try:
            return ast.parse(text)
        except SystemError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> int:
    """The layer index of a module: its longest matching prefix among LAYERS."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer of tests/test_layout.py"
    return rank


def imports(path: Path, known: set[str]) -> set[str]:
    """The builder modules `path` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from builder.x import y` imports builder.x, or the module builder.x.y
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                     else node.module for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == "builder"}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_import_points_down_the_layers(graph):
    upward = [f"{module} ({LAYERS[layer(module)][0]}) imports {target} "
              f"({LAYERS[layer(target)][0]})"
              for module, targets in graph.items() for target in sorted(targets)
              if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_nothing_imports_a_door_but_a_door(graph):
    doors = len(LAYERS) - 1
    assert all(layer(module) == doors for module, targets in graph.items()
               if any(layer(t) == doors for t in targets))


def test_no_import_cycle(graph):
    """Between modules (a package's __init__ aside, which imports nothing of its own)."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [target]))
            if state.get(target) is None and target in graph:
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if state.get(module) is None:
            visit(module, [module])


def test_the_layers_test_would_catch_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from builder.doors.page import launch\n", encoding="utf-8")
    targets = imports(bad, set(modules()))
    assert targets == {"builder.doors.page"} and layer("builder.doors.page") > layer(
        "builder.answering.chatbot")


def test_modules_and_classes_stay_readable():
    too_big = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if (lines := text.count("\n")) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: a class of {size} lines")
    assert not too_big, "\n".join(too_big)
