"""Benchmarks (`just bench [scheduler|runner ...]`): figures with targets, as JSON and a table.

Each suite is a module here with `async def main() -> list[Figure]`. Targets are reported,
met or missed, never asserted: benchmarks are not tests.
"""
