"""opdlm: turn an autoregressive LM into a block-diffusion LM by on-policy distillation.

The library is importable from a plain Python session: it never imports prefect, mlflow, dvc or
boto3 at module level (tests/test_import_boundaries.py keeps this true).
"""

__version__ = "0.1.0"
