"""lm-evaluation-harness integration: the ``opdlm`` model type, the ``opdlm lm-eval`` command, and
:func:`~opdlm.lmeval.run.run_lm_eval` for the pipeline (``pip install 'opdlm[lmeval]'``).

lm-eval 0.4.x discovers no third-party models (no entry-point group, no plugin import), so the
model type is registered by importing this package: ``import opdlm.lmeval`` before
``lm_eval.simple_evaluate(model="opdlm", ...)``, or ``opdlm lm-eval ...``, which is lm-eval's own CLI
with the model registered.
"""

from __future__ import annotations

from opdlm.lmeval.model import MODEL_NAME, OpdlmLM

__all__ = ["MODEL_NAME", "OpdlmLM"]
