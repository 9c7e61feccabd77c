"""The reproduction study: OPD vs the masked-diffusion baseline at matched token budgets, with ablations.

``opdlm study --recipe configs/study.yaml`` trains every arm of the grid (:mod:`opdlm.study.arms`),
evaluates each on the same held-out harness with the teacher as reference
(:mod:`opdlm.study.runner`), and writes a table (:mod:`opdlm.study.table`), plots
(:mod:`opdlm.study.plots`) and an MLflow run (:mod:`opdlm.study.tracking`). Heavy imports (torch,
transformers, matplotlib, mlflow) happen inside the functions that need them.
"""
