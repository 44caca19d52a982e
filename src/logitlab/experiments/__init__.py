"""The study: train every output layer × loss on bundled data and write a self-contained report.

Modules: ``spec`` (what runs; typed ``--set`` overrides), ``data`` (scikit-learn's bundled
datasets or a user's .csv / .npz, split and standardized), ``models`` (linear, MLP), ``runner``
(training, temperature scaling and measuring, in worker processes), ``records`` (the run
directory: append-only JSONL, locked while written, damaged and duplicate lines skipped and
named), ``stats`` (95% intervals, paired per-seed differences, sign-flip tests), ``theory`` (the
theory section's data, from logitlab.analysis / maxent / information), ``plots`` (matplotlib PNGs)
and ``report`` (the HTML, verdict first, drawn from the stored files alone).
Data comes first, drawing after: ``theory`` and ``runner`` produce records, ``report`` draws them
with ``plots``. The imports go one way (runner -> report -> plots, stats, records; runner ->
theory), all at the top of each module. numpy, scikit-learn and matplotlib (the ``study`` extra)
are imported lazily, inside the functions that use them.
Run it with ``logitlab study``; re-render with ``logitlab report RUN_DIR``.
"""
