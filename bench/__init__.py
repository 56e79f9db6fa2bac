"""Benchmarks of redis-backup against redis-cli and a real Redis replica, run in the same session.

Run ``python -m bench.run`` (see docs/PERFORMANCE.md). Every process it starts is stopped when it ends.
"""
