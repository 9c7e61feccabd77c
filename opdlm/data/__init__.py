"""Datasets in one canonical row schema: built-in synthetic suite, loaders, prompting."""
