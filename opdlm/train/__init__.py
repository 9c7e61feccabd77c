"""On-policy distillation training: pure math in small modules, one explicit loop in :mod:`.loop`.

The entry point the CLI and the pipeline call is :func:`opdlm.train.loop.train`. Tensor names end
in their shape letters (``step_map_BL``: batch x response positions; ``B`` is always the batch, the
block size is spelled out as ``block_size``); the legend is ``docs/shapes.md``.
"""
