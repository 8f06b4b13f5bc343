"""Locust load tests of a served detector: `tdet loadtest` (runner.py), the locustfile, Triton metrics."""
