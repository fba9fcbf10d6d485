"""Benchmarks of the provisioning worker (not tests): ``python -m benchmarks.run``.

- ``ingest``: events/s through ``provisioner replay`` and the ingest workers into the projection.
- ``churn``: SCIM write calls sent versus the minimal plan computed from the directory states.

Results are printed and recorded in ``BENCHMARKS.md``.
"""
