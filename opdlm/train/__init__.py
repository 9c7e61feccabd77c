"""On-policy distillation training: pure math in small modules, one explicit loop in :mod:`.loop`.

The entry point the CLI and the pipeline call is :func:`opdlm.train.loop.train`.
"""
