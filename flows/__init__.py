"""Prefect flows chaining the stage tasks per round, plus the `insight` command line."""
