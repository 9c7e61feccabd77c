"""The tiny teacher: a Qwen3-architecture causal LM trained from scratch on the synthetic suite.

It is saved as an ordinary Hugging Face model directory, so conversion, OPD and evaluation treat it
exactly like Qwen3 from the hub. Heavy imports (torch, transformers) happen in the submodules.
"""

from opdlm.config.teacher import BootstrapConfig  # the settings bootstrap_teacher takes (their home: config)

__all__ = ["BootstrapConfig", "bootstrap_teacher"]


def bootstrap_teacher(
    out_dir, config: BootstrapConfig | None = None, overwrite: bool = False, enable_thinking: bool = False
) -> dict:
    """See :func:`opdlm.teacher.bootstrap.bootstrap_teacher`."""
    from opdlm.teacher.bootstrap import bootstrap_teacher as _bootstrap

    return _bootstrap(out_dir, config, overwrite=overwrite, enable_thinking=enable_thinking)
