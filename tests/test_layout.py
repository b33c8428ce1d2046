"""The package's layers: imports run downward only (docs/design.md draws them).

Every module of ms_vit belongs to one unit: a subpackage (models, weights, data, ...) or a module at the top. The
units are ordered from the front (what the scripts call) to the base (what everything may use); a module may import
its own unit and the units below its own, never one above. Read from the source (``ast``), nothing imported."""
import ast
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "ms_vit")
# From the front to the base: each unit may import only the units after it (and itself)
UNITS = [
    "ms_vit",               # the package's face: create_model, ViT, ... for `from ms_vit import ...`
    "ms_vit.cli",           # what the entry scripts share: the parser, the error line
    "ms_vit.factory",       # create_model: a variant, a weight set or a file into a ViT
    "ms_vit.training",      # the training step, optimizer, schedule, run guard, run folder, records
    "ms_vit.evaluation",    # top-1/top-5, the confusion matrix, the report
    "ms_vit.deploy",        # ONNX, the graph compile cache, MINDIR checks
    "ms_vit.weights",       # checkpoints, the layouts of every publisher, the registry of weight sets
    "ms_vit.data",          # folder datasets, the image check, augmentation
    "ms_vit.pictures",      # curves, attention maps, the label drawn on an image
    "ms_vit.models",        # the ViT, its layers, the fused CPU kernels, AMP
    "ms_vit.config",        # recipe files
    "ms_vit.device",        # the device, ranks and seeds
    "ms_vit.downloads",     # one URL into one file
    "ms_vit.timing",        # how long, how far: the loops' progress lines
    "ms_vit.files",         # atomic writes, the cache folders' rule
    "ms_vit.fault_points",  # the write points a crash test stops at
]


def module_names():
    """``{dotted module name: path}`` of every Python module of the package."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def unit_of(module: str) -> str:
    """The longest unit that is ``module`` or contains it."""
    return max((u for u in UNITS if module == u or module.startswith(u + ".")), key=len)


def imported_modules(module: str, path: str):
    """The ms_vit modules ``module`` imports (at the top or inside functions), as dotted names."""
    is_package = path.endswith("__init__.py")
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "ms_vit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ms_vit":
                continue
            for alias in node.names:                       # `from . import checkpoint` imports a module
                yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in module_names() else target


def test_every_module_belongs_to_a_unit_and_imports_run_downward():
    modules = module_names()
    unplaced = [m for m in modules if not any(m == u or m.startswith(u + ".") for u in UNITS)]
    assert not unplaced, f"modules outside every unit (place them in UNITS and docs/design.md): {unplaced}"
    upward = []
    for module, path in sorted(modules.items()):
        source = UNITS.index(unit_of(module))
        for target in imported_modules(module, path):
            if UNITS.index(unit_of(target)) < source:
                upward.append(f"{module} imports {target} ({unit_of(target)} is above {unit_of(module)})")
    assert not upward, "\n".join(upward)


def test_the_rule_sees_an_upward_import(tmp_path):
    """The check itself: a module of models that imports training is caught (an ast of a made-up module)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..training import guard\nfrom ms_vit.weights import checkpoint\n")
    targets = list(imported_modules("ms_vit.models.bad", str(bad)))
    assert [unit_of(t) for t in targets] == ["ms_vit.training", "ms_vit.weights"]
    assert all(UNITS.index(unit_of(t)) < UNITS.index("ms_vit.models") for t in targets)


def test_each_subpackage_says_what_it_holds_and_may_import():
    for unit in UNITS:
        folder = os.path.join(ROOT, *unit.split("."))
        if os.path.isdir(folder) and unit != "ms_vit":
            doc = ast.get_docstring(ast.parse(open(os.path.join(folder, "__init__.py")).read())) or ""
            assert "May import" in doc, f"{unit}/__init__.py: say what it holds and what it may import"
