"""Benchmarks: every performance claim of the project, measured against its baseline.

Run them all with ``make bench`` (``python -m bench``; ``--quick`` for a smoke test). Each
measurement lives in a module of its own and returns a :class:`bench.helpers.Section`;
``bench.report`` turns the sections into ``docs/benchmarks.md`` and the plots beside it.
"""
