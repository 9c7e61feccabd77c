"""From a model source name to a local model directory: the one place source names are read.

:mod:`opdlm.sources.resolve` turns ``hf://ORG/MODEL``, ``s3://...``, ``builtin:tiny`` or a local
path into a checked Hugging Face directory; :mod:`opdlm.sources.builtin` is the one place
``builtin:tiny`` is built, always with the settings of the recipe that asks for it;
:mod:`opdlm.sources.convert` resolves a teacher and converts it into a student, or imports a
released block-diffusion checkpoint through :mod:`opdlm.formats.importer`.

This layer sits above models, formats and teacher (it composes them) and below train, eval and the
pipeline (which call it), so none of those lower packages needs to know what a source name is.
"""
