"""A non-editable install carries what the device needs: the wheel holds the models, their metadata and the
simulated camera's face sample, and no runtime module reaches for files through the source tree."""
import re
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_wheel_ships_models_metadata_and_the_face_sample(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("emotion_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("models/fer_int8.tflite", "models/fer.json", "drivers/sim/faces_sample.npz",
                   "pi/service/cli.py", "pi/resources.py"):
        assert needed in names, needed
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"emotion-edge = pi.service.cli:main" in entry_points


def test_no_runtime_module_resolves_paths_against_the_source_tree():
    offenders = []
    for path in list((ROOT / "pi").rglob("*.py")) + list((ROOT / "drivers").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"__file__\)?\.(resolve\(\)\.)?parent", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "use pi.resources (importlib.resources) instead:\n" + "\n".join(offenders)
