"""Checkpoint formats in and out: released block-diffusion checkpoints and serving engines.

In: :mod:`opdlm.formats.importer` (``divelab`` and ``sdar`` formats, one module each), used by
``opdlm convert``. Out: :mod:`opdlm.formats.export` (``sglang`` and ``lmdeploy``, one module each),
used by ``opdlm export`` and the pipeline's register stage.
"""
