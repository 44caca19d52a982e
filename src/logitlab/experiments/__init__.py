"""The study: train every output layer × loss on bundled data and write a self-contained report.

Modules: ``spec`` (what runs; typed ``--set`` overrides), ``data`` (scikit-learn's bundled
datasets, split and standardized), ``models`` (linear, MLP), ``runner`` (training and
measuring), ``records`` (the run directory, append-only JSONL), ``theory`` (data from
logitlab.analysis / maxent / information), ``plots`` (matplotlib PNGs) and ``report`` (the HTML).
numpy, scikit-learn and matplotlib (the ``study`` extra) are imported lazily, only here.
Run it with ``logitlab study``; re-render with ``logitlab report RUN_DIR``.
"""
