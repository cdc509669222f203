"""Importers: recordings, sleep logs and self-reports made with other devices, into the local store."""
