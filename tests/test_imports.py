"""The package's import graph, read from the source with ``ast``: every import statement (also those inside
functions, i.e. lazy imports) and every ``importlib.import_module("lst_fast...")``. No cycles, no private
(``_name``) function, class or constant taken from another module, and each module imports only the layers
below its own (README, "Layout")."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lst_fast

PACKAGE = Path(lst_fast.__file__).parent
COMPILED = {"lst_fast._C", "lst_fast._C_cuda"}  # pybind11 modules built from csrc/ (no Python source)

# Which module may import which: each module imports only modules of lower layers (the README's "Layout"
# section says the same in words). "" is lst_fast/__init__.py; "kernels.*" is every module in lst_fast/kernels/.
LAYERS = [
    ("choices",),
    ("validation", "rows", "classifier", "fusion", "data", "models", "_extension", "kernels", "testing", "schedules"),
    ("settings", "model_runner", "kernels.*"),
    ("ops", "metrics"),
    ("geometry",),
    ("traversal", "plots"),
    ("graphs", "reference"),
    ("fast",),
    ("",),
    ("examples",),
    ("demo",),
    ("sweep.provenance", "sweep.schema"),
    ("sweep.plan", "sweep.placement", "sweep.store", "sweep.config", "sweep.evaluation"),
    ("sweep.selection",),
    ("sweep.folder",),
    ("sweep.info", "sweep.tables"),
    ("sweep.runner",),
    ("sweep", "sweep.figures"),
    ("sweep.report",),
    ("cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_module(name: str) -> bool:
    return name in MODULES or name in COMPILED


def imports_of(name: str) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import in module ``name``, lazy ones included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found += [(base, alias.name, node.lineno) for alias in node.names]
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.args[0].value, None, node.lineno))
    return found


def target(module: str, imported: str | None) -> str:
    """The lst_fast module an import loads: ``from lst_fast import ops`` loads lst_fast.ops."""
    if imported is not None and is_module(f"{module}.{imported}"):
        return f"{module}.{imported}"
    return module


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the lst_fast modules it imports."""
    edges = {name: set() for name in MODULES}
    for name in MODULES:
        for module, imported, _ in imports_of(name):
            if module == "lst_fast" or module.startswith("lst_fast."):
                edges[name].add(target(module, imported))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the list of modules on it (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_walk_sees_lazy_and_dynamic_imports():
    edges = graph()
    assert "lst_fast.kernels.triton_step" in edges["lst_fast.ops"]  # importlib.import_module inside a function
    assert "lst_fast.sweep.figures" in edges["lst_fast.cli"]  # an import inside a function
    assert "lst_fast.ops" in edges["lst_fast.fast"]  # from lst_fast import ops
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], found


def test_no_private_name_from_another_module():
    """``from lst_fast.x import _name`` and ``x._name`` on an imported lst_fast module are both refused;
    private modules (``lst_fast._extension``, the compiled ``_C``) may be imported."""
    offences = []
    for name, path in MODULES.items():
        bound = {}  # local name -> lst_fast module it refers to
        for module, imported, line in imports_of(name):
            if not (module == "lst_fast" or module.startswith("lst_fast.")):
                continue
            loaded = target(module, imported)
            if imported is not None and loaded == module and imported.startswith("_") and not imported.startswith("__"):
                offences.append(f"{name}:{line} imports {imported} from {module}")
            if imported is not None and loaded != module:
                bound[imported] = loaded
        for node in ast.walk(ast.parse(path.read_text())):
            for alias in getattr(node, "names", []) if isinstance(node, (ast.Import, ast.ImportFrom)) else []:
                if isinstance(node, ast.Import) and alias.name.startswith("lst_fast"):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "lst_fast"
                elif isinstance(node, ast.ImportFrom) and alias.asname and alias.name in bound:
                    bound[alias.asname] = bound[alias.name]
            if (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and not is_module(f"{bound[node.value.id]}.{node.attr}")
            ):
                offences.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert offences == [], offences


def layer_of(name: str) -> int | None:
    """The index in LAYERS of module ``name`` (lst_fast.x.y), or None if it has none."""
    short = name.removeprefix("lst_fast").removeprefix(".")
    for index, layer in enumerate(LAYERS):
        if short in layer or any(m.endswith(".*") and short.startswith(m[:-1]) for m in layer):
            return index
    return None


def test_every_module_has_a_layer():
    assert [name for name in MODULES if layer_of(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_import_only_lower_layers(name):
    edges = graph()
    wrong = [(other, layer_of(other)) for other in sorted(edges[name])
             if other in MODULES and layer_of(other) >= layer_of(name)]
    assert wrong == [], f"{name} (layer {layer_of(name)}) imports {wrong}"


def test_kernel_layer_imports_nothing_from_the_loops():
    """lst_fast.ops and everything it imports, directly or not: kernels, row helpers and checks only."""
    edges, seen, todo = graph(), set(), ["lst_fast.ops"]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    allowed = {"lst_fast._extension", "lst_fast.rows", "lst_fast.validation", *COMPILED}
    outside = [m for m in seen
               if m not in allowed and not (m == "lst_fast.kernels" or m.startswith("lst_fast.kernels."))]
    assert outside == [], f"lst_fast.ops imports (through these) more than kernels, rows and validation: {outside}"


# What the loops and the command line's parser must not import: plotting and image metrics (only the examples,
# sweeps and figures need them) and the model zoo.
PLOTTING_AND_METRICS = ("matplotlib", "lpips", "torchmetrics", "skimage")
CLI_COMMANDS = ("demo", "examples", "sweep", "tables", "info", "plot", "report")


def loaded_after(code: str) -> tuple[dict, int]:
    """Run ``code`` in a fresh interpreter, then report ``{"loaded": [...]}``: which top-level modules of
    PLOTTING_AND_METRICS, timm and torch it imported. Returns that and the exit status of ``code`` (SystemExit)."""
    wrapper = (
        "import json, sys\n"
        "status = 0\n"
        f"try:\n    exec({code!r})\n"
        "except SystemExit as stop:\n    status = stop.code or 0\n"
        f"names = {(*PLOTTING_AND_METRICS, 'timm', 'torch')!r}\n"
        "print(json.dumps({'loaded': [n for n in names if n in sys.modules], 'status': status}))\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True,
                          cwd=PACKAGE.parent)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, report["status"]


def test_the_loops_import_no_plotting_or_metrics():
    report, _ = loaded_after(  # the submodules as attributes of the package, as the tests and users reach them
        "import lst_fast\n"
        "lst_fast.fast.traverse_batch, lst_fast.ops.backend_info, lst_fast.reference.traverse_batch\n"
        "lst_fast.traverse_batch, lst_fast.TraversalSettings, lst_fast.TraversalResult"
    )
    assert "torch" in report["loaded"]  # the wrapper sees what the code imported
    assert [m for m in report["loaded"] if m in PLOTTING_AND_METRICS] == []


@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_command_help_imports_no_torch(command):
    """``lst-fast CMD --help`` is built from the light modules: no torch, timm, plotting or metrics."""
    report, status = loaded_after(f"from lst_fast import cli\ncli.main([{command!r}, '--help'])")
    assert status == 0
    assert report["loaded"] == []


def test_bad_argument_is_refused_before_torch():
    argv = ["sweep", "--out", "x", "--model", "m", "--data", "embedded", "--iters", "-3"]
    report, status = loaded_after(f"from lst_fast import cli\ncli.main({argv!r})")
    assert status == 2
    assert report["loaded"] == []


def test_package_attributes_are_the_loops_own():
    from lst_fast import fast, settings, traversal

    assert lst_fast.traverse_batch is fast.traverse_batch
    assert lst_fast.TraversalSettings is settings.TraversalSettings
    assert lst_fast.TraversalResult is traversal.TraversalResult
    assert set(lst_fast.__all__) <= set(dir(lst_fast))
    with pytest.raises(AttributeError, match="no attribute 'traverse'"):
        lst_fast.traverse  # noqa: B018
