"""Reports computed on the device from the local store (statistics, plots, HTML)."""
