"""The sections of `bench/gpu.py`, one module each; every section returns a dict for the JSON report."""
