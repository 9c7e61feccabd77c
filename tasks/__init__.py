"""Prefect tasks of the opdlm pipeline.

Each task is thin: it takes paths and ids (never models or tensors), calls one library function from
``opdlm``, persists its output, logs it to MLflow, and returns a path, an id or a small JSON record.
Imports run one way: ``flows`` -> ``tasks`` -> ``opdlm``.
"""
