"""Sweeps as data: each file is a base config (`get_config`) and its points
(`get_sweep`), run by `python -m experiments.sweep --sweep=FILE --workdir=DIR`."""
