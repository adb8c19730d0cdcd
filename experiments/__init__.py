"""Sweeps of training runs and their reports.

    python -m experiments.sweep --sweep=configs/sweeps/depth.py --workdir=DIR
    python -m experiments.report DIR

`sweep` trains and evaluates every point of a sweep file in DIR/<point>/;
`report` reads what the points left and writes report.md, results.csv and
plots. Both drive the training and evaluation code through its public
functions; nothing here changes how a run trains.
"""
