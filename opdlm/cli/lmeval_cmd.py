"""``opdlm lm-eval``: EleutherAI's lm-evaluation-harness with the ``opdlm`` model type (extra ``lmeval``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "lm-eval",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def lm_eval_(ctx: typer.Context) -> None:
        """lm-eval's CLI with --model opdlm available, e.g. --model opdlm --model_args pretrained=DIR,threshold=0.9
        --tasks gsm8k --output_path out (all arguments go to lm-eval; --help shows its help)."""
        from opdlm.lmeval.cli import run

        run(list(ctx.args))
