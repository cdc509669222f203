"""Importers of data recorded elsewhere (wearable exports, self-reports) into the local store."""
