"""The house's import rules, read from the source with `ast` (nothing is imported):

1. A plugin imports another rung distribution's package (`rung_x`) only if its pyproject.toml
   declares that distribution (`dependencies` or any `optional-dependencies` extra). Every
   import counts, wherever it is: module level, inside a function, under `if TYPE_CHECKING:`
   or in a `try: ... except ImportError:`. A lazy or guarded import is still a dependency:
   the code breaks or silently changes behaviour when the other distribution is absent.
2. No cycle between distributions. The graph is the declared dependencies plus every import
   between distributions (so an undeclared import that closes a cycle is reported as both).
3. The core (`core/rung`) imports no plugin package, at any level.
4. No cycle between the core's modules, counting every import that runs, at module level or
   inside a function; only `if TYPE_CHECKING:` blocks are left out (they never run, and are
   how two contracts may name each other's types). A module-level cycle breaks or not
   depending on which module is imported first; a function-level one cannot leave a module
   half-initialised, but it still means two modules lean on each other, so the core's layers
   (records and contracts at the bottom, config, runner and api on top) are not a layering.
   The core has none, so the stricter rule costs nothing today. An edge goes to the most
   specific core module named (`from rung.cli import main` is an edge to `rung.cli.main`),
   not to the packages above it (their `__init__` imports nothing heavy or circular).
5. The core imports no heavy library (torch, jax, transformers, numpy, openai, ...) at module
   level; inside a function is fine.
6. Nothing depends upward (DESIGN.md's house, bottom-up): providers use the core; frameworks
   use the core and providers; trainers use the core and providers, never a framework (they
   ask for objectives by name); the CLI may use anything. Within a layer only the pairs in
   `SIDEWAYS` may depend on each other. A new distribution is placed in `LAYERS` first.

Every violation is reported as `path:line: what`, paths relative to the repository root.
The checker runs on synthetic trees too, so the rules can be seen to catch what they claim.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

# Module-level imports the core may not make (top-level package names).
HEAVY = {
    "torch", "jax", "jaxlib", "flax", "optax", "orbax", "transformers", "tokenizers", "peft",
    "trl", "accelerate", "bitsandbytes", "safetensors", "huggingface_hub", "openai",
    "anthropic", "numpy", "pandas", "pyarrow", "scipy", "datasets", "datatrove", "matplotlib",
}

# DESIGN.md's layering, bottom-up: each layer and the layers it may depend on.
LAYERS = {
    "core": ({"rung"}, set()),
    "providers": ({"rung-openai", "rung-anthropic", "rung-tokenizers", "rung-tensorboard", "rung-wandb",
                   "rung-gguf"}, {"core"}),
    "frameworks": ({"rung-torch", "rung-jax", "rung-hf", "rung-llamacpp"}, {"core", "providers"}),
    "trainers": ({"rung-lora", "rung-pretrain", "rung-rlhf", "rung-eval"}, {"core", "providers"}),
    "cli": ({"rung-prompt", "rung-serve", "rung-plot", "rung-compare"},
            {"core", "providers", "frameworks", "trainers"}),
}
SIDEWAYS = {
    ("rung-hf", "rung-torch"),  # hf runs transformers models on rung-torch's engine
    ("rung-rlhf", "rung-lora"),  # preference and RL trainers shape chat data as sft does
}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Import:
    module: str  # absolute dotted name, relative imports resolved
    names: tuple[str, ...]  # the names of a `from module import a, b`; () for `import module`
    line: int
    module_level: bool  # runs while the importing module loads
    type_checking: bool  # under `if TYPE_CHECKING:`


@dataclass
class Module:
    name: str  # dotted, e.g. rung_torch.modeling
    path: Path  # relative to the root
    imports: list[Import]


@dataclass
class Distribution:
    name: str  # normalised
    pyproject: Path
    packages: set[str]  # top-level import names
    declared: dict[str, int]  # normalised distribution name -> line in pyproject.toml
    modules: list[Module] = field(default_factory=list)


@dataclass
class Project:
    root: Path
    core: Distribution
    plugins: list[Distribution]

    @property
    def distributions(self) -> list[Distribution]:
        return [self.core, *self.plugins]

    def owner(self, module: str) -> Distribution | None:
        """The distribution whose package `module` belongs to."""
        top = module.split(".")[0]
        return next((d for d in self.distributions if top in d.packages), None)


# ------------------------------------------------------------------------- reading the tree


def requirement_name(spec: str) -> str:
    return normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def package_folders(folder: Path, setuptools: dict) -> dict[str, Path]:
    """The top-level packages a distribution installs and where each lies, read from its
    setuptools settings: `packages = [...]` or `[tool.setuptools.packages.find]`."""
    packages = setuptools.get("packages", {"find": {}})
    if isinstance(packages, list):
        return {p: folder / p for p in packages if "." not in p}
    find = packages.get("find", {})
    include = [pattern.split(".")[0] for pattern in find.get("include", ["*"])]
    found = {}
    for base in find.get("where", ["."]):
        for init in sorted((folder / base).glob("*/__init__.py")):
            if any(fnmatch.fnmatch(init.parent.name, pattern) for pattern in include):
                found[init.parent.name] = init.parent
    return found


def read_distribution(root: Path, folder: Path) -> Distribution:
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    project = data["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    lines = text.splitlines()
    declared = {}
    for spec in specs:
        number = next((i for i, line in enumerate(lines, 1) if f'"{spec}"' in line), 0)
        declared.setdefault(requirement_name(spec), number)
    folders = package_folders(folder, data.get("tool", {}).get("setuptools", {}))
    dist = Distribution(normalise(project["name"]), pyproject.relative_to(root), set(folders), declared)
    for package, package_folder in folders.items():
        base = package_folder.parent
        for path in sorted(package_folder.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            dist.modules.append(Module(name, path.relative_to(root), imports_of(path, name, is_package)))
    return dist


def read_project(root: Path) -> Project:
    core = read_distribution(root, root)
    plugins = [read_distribution(root, p.parent) for p in sorted(root.glob("plugins/*/pyproject.toml"))]
    return Project(root, core, plugins)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, module: str, is_package: bool) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, (), node.lineno, module_level, type_checking))
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, target] if target else base)
            names = tuple(a.name for a in node.names)
            found.append(Import(target, names, node.lineno, module_level, type_checking))
        for child in ast.iter_child_nodes(node):
            inner_level = module_level and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(node, ast.If) and is_type_checking(node.test) and child in node.body:
                visit(child, inner_level, True)
            else:
                visit(child, inner_level, type_checking)

    visit(tree, True, False)
    return found


# ------------------------------------------------------------------------------ the rules


def where(module: Module, imp: Import) -> str:
    return f"{module.path}:{imp.line}"


def undeclared_imports(project: Project) -> list[str]:
    """Rule 1: a plugin imports another rung distribution only if it declares it."""
    problems = []
    for dist in project.plugins:
        for module in dist.modules:
            for imp in module.imports:
                other = project.owner(imp.module)
                if other is None or other is dist or other.name in dist.declared:
                    continue
                problems.append(f"{where(module, imp)}: {dist.name} imports {imp.module} "
                                f"({other.name}), which {dist.pyproject} does not declare")
    return problems


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node or a self-edge."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def cycle_report(kind: str, edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """One line per edge inside each cycle: where it is made."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    problems = []
    for component in strongly_connected(graph):
        members = set(component)
        for (a, b), sites in sorted(edges.items()):
            if a in members and b in members:
                for site in sites:
                    problems.append(f"{site}: {a} -> {b} (cycle between {kind} {', '.join(component)})")
    return problems


def dependency_edges(project: Project) -> dict[tuple[str, str], list[str]]:
    """(from, to) distribution pairs, each with where it is declared or imported."""
    names = {d.name for d in project.distributions}
    edges: dict[tuple[str, str], list[str]] = {}
    for dist in project.plugins:
        for dep, line in dist.declared.items():
            if dep in names and dep != dist.name:
                edges.setdefault((dist.name, dep), []).append(f"{dist.pyproject}:{line}")
        for module in dist.modules:
            for imp in module.imports:
                other = project.owner(imp.module)
                if other is not None and other is not dist:
                    edges.setdefault((dist.name, other.name), []).append(where(module, imp))
    return edges


def distribution_cycles(project: Project) -> list[str]:
    """Rule 2: no cycle between distributions, declared or imported."""
    return cycle_report("distributions", dependency_edges(project))


def upward_dependencies(project: Project, layers=LAYERS, sideways=SIDEWAYS) -> list[str]:
    """Rule 6: every dependency points down the house."""
    layer_of = {dist: layer for layer, (members, _) in layers.items() for dist in members}
    problems = [f"{d.pyproject}:1: {d.name} is in no layer: place it in LAYERS ({__name__})"
                for d in project.distributions if d.name not in layer_of]
    for (a, b), sites in sorted(dependency_edges(project).items()):
        if a not in layer_of or b not in layer_of or (a, b) in sideways:
            continue
        if layer_of[b] not in layers[layer_of[a]][1]:
            problems += [f"{site}: {a} ({layer_of[a]}) depends on {b} ({layer_of[b]}); "
                         f"{layer_of[a]} may use only {', '.join(sorted(layers[layer_of[a]][1])) or 'nothing'}"
                         for site in sites]
    return problems


def core_imports_of_plugins(project: Project) -> list[str]:
    """Rule 3: the core imports no plugin package."""
    problems = []
    for module in project.core.modules:
        for imp in module.imports:
            other = project.owner(imp.module)
            top = imp.module.split(".")[0]
            if (other is not None and other is not project.core) or top.startswith("rung_"):
                problems.append(f"{where(module, imp)}: the core imports {imp.module}, a plugin package")
    return problems


def core_cycles(project: Project) -> list[str]:
    """Rule 4: no cycle of imports that run (any level) between the core's modules."""
    known = {m.name for m in project.core.modules}
    edges: dict[tuple[str, str], list[str]] = {}
    for module in project.core.modules:
        for imp in module.imports:
            if imp.type_checking or project.owner(imp.module) is not project.core:
                continue
            targets = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in known]
            if len(targets) < len(imp.names) or not imp.names:  # names that are not submodules
                targets.append(imp.module)
            for target in targets:
                if target in known and target != module.name:
                    edges.setdefault((module.name, target), []).append(where(module, imp))
    return cycle_report("core modules", edges)


def core_heavy_imports(project: Project) -> list[str]:
    """Rule 5: no heavy library at the core's module level."""
    return [f"{where(module, imp)}: the core imports {imp.module} at module level (import it inside the function)"
            for module in project.core.modules for imp in module.imports
            if imp.module_level and not imp.type_checking and imp.module.split(".")[0] in HEAVY]


def report(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


# ---------------------------------------------------------------------- this repository

PROJECT = read_project(ROOT)


def test_the_tree_is_read_as_the_distributions_it_installs():
    """Guards the checker: if it read nothing, every rule below would pass."""
    plugins = {d.name: d.packages for d in PROJECT.plugins}
    assert PROJECT.core.name == "rung" and PROJECT.core.packages == {"rung"}
    assert len(plugins) == len(list(ROOT.glob("plugins/*/pyproject.toml"))) >= 9
    assert all(packages == {name.replace("-", "_")} for name, packages in plugins.items()), plugins
    assert "rung.api" in {m.name for m in PROJECT.core.modules}
    assert all(d.modules for d in PROJECT.distributions)


def test_plugins_import_only_the_distributions_they_declare():
    problems = undeclared_imports(PROJECT)
    assert not problems, report(problems)


def test_no_cycle_between_distributions():
    problems = distribution_cycles(PROJECT)
    assert not problems, report(problems)


def test_every_dependency_points_down_the_house():
    problems = upward_dependencies(PROJECT)
    assert not problems, report(problems)


def test_the_core_imports_no_plugin():
    problems = core_imports_of_plugins(PROJECT)
    assert not problems, report(problems)


def test_no_cycle_between_core_modules():
    problems = core_cycles(PROJECT)
    assert not problems, report(problems)


def test_the_core_imports_no_heavy_library_at_module_level():
    problems = core_heavy_imports(PROJECT)
    assert not problems, report(problems)


# ------------------------------------------------------------ the checker, on a made-up tree


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def pyproject(name: str, deps: list[str], extras: dict[str, list[str]] | None = None, find: str = "") -> str:
    """A pyproject.toml with one dependency a line (so each has its own line number)."""
    lines = ["[project]", f'name = "{name}"', "dependencies = [", *(f'    "{d}",' for d in deps), "]"]
    if extras:
        lines += ["[project.optional-dependencies]", *(f"{k} = {json.dumps(v)}" for k, v in extras.items())]
    package = name.replace("-", "_")
    lines += ["[tool.setuptools.packages.find]", find or f'include = ["{package}*"]']
    return "\n".join(lines) + "\n"


def synthetic(tmp_path: Path, changes: dict[str, str] | None = None) -> Project:
    """A core and three plugins: rung-b declares rung-a and, as an extra, rung-c."""
    files = {
        "pyproject.toml": pyproject("rung", ["pluggy"], find='where = ["core"]'),
        "core/rung/__init__.py": "",
        "core/rung/records.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rung.api import run\n",
        "core/rung/api.py": "from rung import records\n\ndef run():\n    import torch\n    from rung import loop\n",
        "core/rung/loop.py": "from rung.records import Message\n",
        "plugins/rung-a/pyproject.toml": pyproject("rung-a", ["rung"]),
        "plugins/rung-a/rung_a/__init__.py": "",
        "plugins/rung-b/pyproject.toml": pyproject("rung-b", ["rung", "rung-a>=0.1"], {"c": ["rung_c"]}),
        "plugins/rung-b/rung_b/__init__.py": "import rung_a\nimport rung_c.x\n",
        "plugins/rung-c/pyproject.toml": pyproject("rung-c", ["rung"]),
        "plugins/rung-c/rung_c/__init__.py": "",
        "plugins/rung-c/rung_c/x.py": "",
    }
    return read_project(write_tree(tmp_path, {**files, **(changes or {})}))


def test_checker_passes_a_clean_tree(tmp_path):
    project = synthetic(tmp_path)
    assert {d.name: d.packages for d in project.distributions} == {
        "rung": {"rung"}, "rung-a": {"rung_a"}, "rung-b": {"rung_b"}, "rung-c": {"rung_c"}}
    # rung.records -> rung.api is for type checkers only: no cycle; `import torch` inside
    # run() is allowed.
    assert undeclared_imports(project) == distribution_cycles(project) == []
    assert core_imports_of_plugins(project) == core_cycles(project) == core_heavy_imports(project) == []


def test_checker_finds_an_undeclared_import_at_any_level(tmp_path):
    lazy = "import os\n\ndef f():\n    from rung_c import x\n"
    project = synthetic(tmp_path, {"plugins/rung-a/rung_a/impl.py": lazy})
    assert undeclared_imports(project) == [
        "plugins/rung-a/rung_a/impl.py:4: rung-a imports rung_c (rung-c), "
        "which plugins/rung-a/pyproject.toml does not declare"]


def test_checker_finds_a_cycle_between_distributions(tmp_path):
    guarded = "try:\n    import rung_b\nexcept ImportError:\n    pass\n"
    project = synthetic(tmp_path, {"plugins/rung-a/rung_a/impl.py": guarded})
    assert distribution_cycles(project) == [
        "plugins/rung-a/rung_a/impl.py:2: rung-a -> rung-b (cycle between distributions rung-a, rung-b)",
        "plugins/rung-b/pyproject.toml:5: rung-b -> rung-a (cycle between distributions rung-a, rung-b)",
        "plugins/rung-b/rung_b/__init__.py:1: rung-b -> rung-a (cycle between distributions rung-a, rung-b)",
    ]


def test_checker_finds_core_cycles_plugin_imports_and_heavy_imports(tmp_path):
    project = synthetic(tmp_path, {
        "core/rung/records.py": "import numpy as np\nfrom rung import api\n\ndef f():\n    import rung_a\n",
        "core/rung/loop.py": "def g():\n    from rung.api import run\n",
    })
    cycle = "(cycle between core modules rung.api, rung.loop, rung.records)"
    assert core_cycles(project) == [
        f"core/rung/api.py:5: rung.api -> rung.loop {cycle}",
        f"core/rung/api.py:1: rung.api -> rung.records {cycle}",
        f"core/rung/loop.py:2: rung.loop -> rung.api {cycle}",
        f"core/rung/records.py:2: rung.records -> rung.api {cycle}",
    ]
    assert core_imports_of_plugins(project) == ["core/rung/records.py:5: the core imports rung_a, a plugin package"]
    assert core_heavy_imports(project) == [
        "core/rung/records.py:1: the core imports numpy at module level (import it inside the function)"]


def test_checker_finds_a_dependency_that_points_up(tmp_path):
    project = synthetic(tmp_path)
    layers = {"core": ({"rung"}, set()), "low": ({"rung-b", "rung-c"}, {"core"}), "high": ({"rung-a"}, {"core", "low"})}
    assert upward_dependencies(project, layers, sideways={("rung-b", "rung-c")}) == [
        "plugins/rung-b/pyproject.toml:5: rung-b (low) depends on rung-a (high); low may use only core",
        "plugins/rung-b/rung_b/__init__.py:1: rung-b (low) depends on rung-a (high); low may use only core",
    ]
    del layers["high"]
    assert upward_dependencies(project, layers, sideways={("rung-b", "rung-c")}) == [
        f"plugins/rung-a/pyproject.toml:1: rung-a is in no layer: place it in LAYERS ({__name__})"]
