"""Helpers shared by the tests and scripts/bench.py: the ORS client, the reference server, the engine, this run."""
