"""The pipeline's stages as plain library functions, shared by the Prefect tasks and the DVC stages.

Nothing here imports Prefect, MLflow or DVC: :mod:`opdlm.pipeline.stages` turns a recipe into one
call of the library function that does each stage's work, :mod:`opdlm.pipeline.fingerprint` computes
the content keys that caching uses, :mod:`opdlm.pipeline.gate` decides promotion and
:mod:`opdlm.pipeline.model_card` writes the registered model's card.
"""
