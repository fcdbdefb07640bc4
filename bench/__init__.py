"""Benchmarks of backup-watcher against the simulator; see docs/performance.md."""
