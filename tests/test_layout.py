"""The package layout shows the flow: each folder is a stage, and a module imports only from its own stage or a lower
one (imports inside functions count too); no module is part of an import cycle. Read from the source, not run."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgewise"
# lowest first: a stage may import the stages before it
LAYERS = ["core", "models", "sources", "compute", "quant", "runtime", "serve", "registry", "passes", "evaluators",
          "engine", "cli"]


def imports() -> dict[str, set[str]]:
    """module -> edgewise modules it imports (as dotted names below edgewise)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgewise"):
                base = node.module.removeprefix("edgewise").lstrip(".")
                for alias in node.names:  # `from edgewise.sources import datasets` imports a module
                    child = f"{base}.{alias.name}" if base else alias.name
                    found.add(child if (PACKAGE / (child.replace(".", "/") + ".py")).exists() else base)
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("edgewise.") for a in node.names if a.name.startswith("edgewise.")}
        modules[name] = {m for m in found if m}
    return modules


def stage(module: str) -> str:
    return module.split(".")[0]


def test_every_import_goes_down_the_stages():
    wrong = []
    for module, targets in imports().items():
        if stage(module) not in LAYERS:
            continue  # the package face (__init__, __main__)
        for target in targets:
            if stage(target) in LAYERS and LAYERS.index(stage(target)) > LAYERS.index(stage(module)):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_every_stage_is_a_folder_in_the_list():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)
    assert {p.stem for p in PACKAGE.glob("*.py")} == {"__init__", "__main__"}


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in graph.get(module, ()):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join(path[path.index(target):] + [target]) if target in path else target)
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
