"""Files shipped inside the installed packages (models, metadata, the simulated camera's face sample).

They are found through importlib.resources, never relative to a source tree, so `pip install .` (not only an
editable install) runs from any directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

FER_MODEL = ("models", "fer_int8.tflite")
FER_METADATA = ("models", "fer.json")
REGISTRAR_MODEL = ("models", "face_register_int8.tflite")
REGISTRAR_METADATA = ("models", "face_register.json")
PHYSIO_PRIOR = ("models", "physio_prior.json")
FACE_SAMPLE = ("drivers.sim", "faces_sample.npz")


def shipped(resource: tuple[str, str]) -> Path:
    """The path of a file shipped in a package; the packages install as plain directories (not zipped)."""
    package, name = resource
    path = Path(str(resources.files(package).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"the installed package {package} has no {name}; reinstall emotion-edge")
    return path


def registrar_metadata_for(model_path: str | Path) -> Path:
    """A face registrar's metadata: face_register.json beside its model, where the trainer writes it and where
    the shipped pair lies, so that naming a model alone never pairs it with another model's figures."""
    return Path(model_path).with_name(REGISTRAR_METADATA[1])
