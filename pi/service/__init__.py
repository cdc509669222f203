"""The running device: config, hardware wiring, the device's jobs, the daemon, the CLI, the local store, and
systemd/lock/log plumbing.
"""
