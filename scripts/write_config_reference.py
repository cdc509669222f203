#!/usr/bin/env python3
"""Regenerate config.yaml (every key, its default and its meaning) from the schema in pi/service/config.py.
tests/test_config.py checks that config.yaml and the built-in defaults agree."""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pi.service.config import SCHEMA  # noqa: E402

HEADER = """# emotion-edge configuration: every key with its documented default.
# A file of your own needs only the keys it changes (`emotion-edge run --config my.yaml`);
# `--set section.key=value` overrides any key from the command line.
# Relative model/dataset paths are relative to the project directory.
"""


def render() -> str:
    lines = [HEADER]
    for section, keys in SCHEMA.items():
        lines.append(f"{section}:")
        for key, spec in keys.items():
            value = yaml.safe_dump({key: spec.default}, default_flow_style=True, width=200).strip()[1:-1]
            choices = f" [{' | '.join(map(str, spec.choices))}]" if spec.choices else ""
            lines.append(f"  {value:<48} # {spec.doc}{choices}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    (ROOT / "config.yaml").write_text(render())
