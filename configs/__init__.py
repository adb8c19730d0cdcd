"""Experiment configurations: Python files returning ml_collections ConfigDicts."""
