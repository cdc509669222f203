"""Importers that turn recordings made with other devices into the local store's per-second records."""
