"""The tree reads as the architecture: ``rllib_app``'s subpackages form layers, each
importing only the ones below it (the order in ``rllib_app/__init__.py``), and no
module import circle anywhere in the project."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: Lowest first; a package may import itself and the ones before it.
LAYERS = ["rl", "outputs", "curriculum", "config", "evaluation", "training", "experiments", "cli"]
#: The project packages each layer may import besides ``rllib_app``'s own lower layers.
OUTSIDE = {"rl": set()}


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in ("envs", "models", "rllib_app"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def test_every_rllib_app_module_lives_in_a_role_package():
    loose = [p.name for p in (ROOT / "rllib_app").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == []
    packages = sorted(p.name for p in (ROOT / "rllib_app").iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)
    for package in LAYERS:
        assert ast.get_docstring(ast.parse((ROOT / "rllib_app" / package / "__init__.py").read_text())), package


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for name, path in _modules().items():
        parts = name.split(".")
        if parts[0] != "rllib_app" or len(parts) < 2 or parts[1] not in LAYERS:
            if parts[0] in ("envs", "models"):
                wrong += [f"{name} imports {m}" for m in _imports(path) if m.startswith("rllib_app")]
                if parts[0] == "envs":  # the env knows nothing of Ray or the module
                    wrong += [f"{name} imports {m}" for m in _imports(path) if m.split(".")[0] in ("ray", "models")]
            continue
        level = LAYERS.index(parts[1])
        for imported in _imports(path):
            top = imported.split(".")
            if top[0] == "rllib_app" and len(top) > 1 and top[1] in LAYERS and LAYERS.index(top[1]) > level:
                wrong.append(f"{name} imports {imported}")
            if top[0] in ("envs", "models") and parts[1] in OUTSIDE:
                wrong.append(f"{name} imports {imported} (rllib_app.{parts[1]} is env-agnostic)")
    assert wrong == []


def test_no_import_circle():
    modules = _modules()
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ is not an edge of its children's imports
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
