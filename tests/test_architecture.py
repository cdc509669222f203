"""The layers' one-way rule, checked on the source: a module may import its own layer and the ones below it.

    drivers  ->  pi foundation (errors, clock, metrics, resources)  ->  pi.physiology  ->  pi.vision
             ->  pi.personal (model, fusion, feedback)  ->  pi.messaging  ->  pi.alerts  ->  pi.service
             ->  tools on the store (pi.ingest, pi.reports, pi.web)  ->  the CLI, which wires them all
Lazy imports inside functions count too: a lower layer that reaches up, even late, is a cycle in waiting.
"""
import ast
from pathlib import Path

from conftest import ROOT

LAYERS = [
    ("drivers",),
    ("pi.errors", "pi.clock", "pi.metrics", "pi.resources", "pi"),
    ("pi.physiology",),
    ("pi.vision",),
    ("pi.personal",),
    ("pi.messaging",),
    ("pi.alerts",),  # alert rules and e-mail: they see results and records, publish through the outbox
    ("pi.service",),
    ("pi.ingest", "pi.reports", "pi.web"),
    ("pi.service.cli", "pi.__main__"),  # the composition root: it registers every tool's sub-commands
]


def layer_of(module: str) -> int:
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{module} belongs to no layer: add its package to LAYERS"
    return best


def modules():
    for top in ("drivers", "pi"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:  # "from pi.vision import fer" imports the module pi.vision.fer
                yield f"{node.module}.{alias.name}", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def test_imports_point_down_the_layers_only():
    upward = []
    for module, path in modules():
        own = layer_of(module)
        for target, line in imported(path):
            if target.split(".")[0] not in ("pi", "drivers"):
                continue
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {own}) imports {target} "
                              f"(layer {layer_of(target)})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_drivers_import_nothing_from_pi():
    for module, path in modules():
        if module.startswith("drivers"):
            assert not [t for t, _ in imported(path) if t == "pi" or t.startswith("pi.")], path


def test_the_rule_catches_an_upward_import(tmp_path):
    fake = tmp_path / "sampler.py"
    fake.write_text("from pi.service.device import Device\n")
    targets = [t for t, _ in imported(fake)]
    assert layer_of("pi.physiology.sampler") < max(layer_of(t) for t in targets)
