"""Photometric normalisation of a cropped face: one place for the pipeline's crop (face.normalise) and
the classifier's normalised views (FaceViews.normalised)."""
from __future__ import annotations

import cv2
import numpy as np

NORMALISATIONS = ("none", "equalize", "clahe")


def normalise_face(face: np.ndarray, how: str = "none") -> np.ndarray:
    """Photometric normalisation of a cropped uint8 face: none, global histogram equalisation, or CLAHE
    (clip 2, 4x4 tiles: at 48 px a tile holds an eye or the mouth)."""
    if how == "none":
        return face
    if how == "equalize":
        return cv2.equalizeHist(face)
    if how == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(face)
    raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {how!r}")
