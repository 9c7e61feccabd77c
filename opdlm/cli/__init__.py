"""The ``opdlm`` command line. Each subcommand lives in its own module and imports heavy packages lazily."""
