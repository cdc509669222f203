"""The face half: detection and cropping, the FER TFLite runtime, and its evaluation."""
