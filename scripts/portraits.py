"""Real, public-domain portraits that installed packages bundle: the face scripts' real-photo checks
(scripts/smoke_face_photos.py, scripts/measure_fer_framing.py) read them from here."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Portrait:
    source: str  # where it comes from, and its licence
    expression: str  # what the face shows, in FER2013's classes
    bgr: np.ndarray


def bundled_portraits() -> dict[str, Portrait]:
    """scikit-image's astronaut (Eileen Collins, NASA), smiling, and matplotlib's Grace Hopper (US Navy),
    neutral with glasses and a cap. A package that is missing, or built without its sample data, gives one
    portrait fewer."""
    photos: dict[str, Portrait] = {}
    try:
        from skimage import data

        photos["astronaut"] = Portrait("skimage.data.astronaut() (NASA, public domain)", "happy",
                                       cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
        if hopper is not None:
            photos["grace_hopper"] = Portrait("matplotlib sample data grace_hopper.jpg (US Navy, public domain)",
                                              "neutral", hopper)
    except (ImportError, OSError):
        pass
    return photos
