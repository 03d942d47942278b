"""Prefect tasks: one thin task per pipeline stage over a pure `insight` function."""
