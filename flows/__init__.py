"""Prefect flows of the opdlm pipeline: they only compose the tasks in ``tasks/``."""
