"""`import mgd` needs only torch and scipy, and exposes the public interface of docs/mgd.md; the
modules that make's quick steps run (the overlay, the command-line helpers) import neither."""
import inspect
import subprocess
import sys

import mgd


def test_import_does_not_touch_detectron2():
    code = ("import sys; from mgd import *; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('detectron2', 'ortools')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_interface():
    expected = {
        "margins_from_affine": ["weight", "bias"],
        "distillation_loss": ["student", "teacher", "margin"],
        "matching_cost": ["student", "teacher"],
        "solve_matching": ["cost", "sparse"],
        "reduce_teacher": ["teacher", "margin", "guided", "student_channels", "method", "generator"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(mgd, name)).parameters) == params
    assert mgd.REDUCERS == ("amp", "rd", "sp", "sm")
    init = inspect.signature(mgd.MGDDistiller.__init__).parameters
    assert list(init) == ["self", "student_channels", "teacher_channels", "reducer", "ignore_inds",
                          "loss_factors", "norm", "position_names"]
    for method in ("update_margins", "reset_matching", "accumulate_matching", "finish_matching", "forward"):
        assert callable(getattr(mgd.MGDDistiller, method))


def test_every_public_name_resolves_and_an_unknown_one_does_not():
    for name in mgd.__all__:
        value = getattr(mgd, name)
        assert name.isupper() or value.__module__.startswith("mgd."), name
        assert name in dir(mgd)
    try:
        mgd.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_the_quick_modules_start_without_torch_or_scipy():
    """`make overlay` (run before every training target) and the error-line helpers start in
    milliseconds: importing the package for them must not import torch (~2-5 s here)."""
    code = ("import sys, mgd.overlay, mgd.cli, mgd.bootstrap, mgd.errors; "
            "heavy = [m for m in ('torch', 'scipy', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports_within(package_dir, package: str) -> dict:
    """{module: {modules of ``package`` it imports, at module level or inside functions}}, read
    from the source (absolute ``package.x`` and relative ``.x`` / ``..x`` imports)."""
    import ast
    from pathlib import Path

    graph = {}
    root = Path(package_dir)
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_init else parts)
        base = parts[:-1]  # the package the module's relative imports start from
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    target = base[:len(base) - node.level + 1] + (node.module.split(".") if node.module else [])
                    name = ".".join(target)
                else:
                    name = node.module or ""
                if name.split(".")[0] == package:
                    edges.add(name)
                    edges |= {f"{name}.{a.name}" for a in node.names}
        graph[module] = edges
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def test_no_two_modules_of_mgd_import_each_other():
    """The layers import one way (docs/architecture.md): a cycle, even through a function-level
    import, means two modules each decide part of the other's job (e.g. the checkpoint format
    calling the strict rules that import the format)."""
    import os

    graph = _imports_within(os.path.dirname(mgd.__file__), "mgd")
    packages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}
    cycles = []

    def visit(module, path):
        for nxt in graph[module]:
            if nxt in packages and module.startswith(nxt + "."):
                continue  # a module importing its own package's __init__ for a sibling is not a cycle
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for module in sorted(graph):
        if module not in packages:
            visit(module, [module])
    assert not cycles, cycles[:3]


def test_no_module_of_mgd_imports_a_detection_framework():
    """docs/architecture.md: mgd/ is torch + scipy; the Detectron2 config it edits is handed in."""
    import ast
    import os
    from pathlib import Path

    frameworks = ("detectron2", "mmdet", "mmcv", "torchvision")
    found = []
    for path in Path(os.path.dirname(mgd.__file__)).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in frameworks]
    assert not found, found
