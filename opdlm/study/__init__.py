"""The reproduction study's library side: what to train and how to read the results.

``opdlm study --recipe configs/study.yaml`` runs the study as the Prefect flow ``opdlm-study``
(``flows/study.py``, its tasks in ``tasks/study*.py``). The library keeps the pure parts: the study
file (:mod:`opdlm.study.config`), the arms (:mod:`opdlm.study.arms`), token budgets
(:mod:`opdlm.study.budget`), the plan of jobs (:mod:`opdlm.study.plan`), the table and headline
ratios against training tokens and training FLOPs (:mod:`opdlm.study.table`) and the plots
(:mod:`opdlm.study.plots`). Heavy imports (transformers, matplotlib) happen inside the functions
that need them; nothing here imports Prefect or MLflow.
"""
