"""The shipped models and their metadata, as package data (found with importlib.resources, so a
non-editable install finds them from any directory)."""
