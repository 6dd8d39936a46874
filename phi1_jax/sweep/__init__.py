"""Sweeps over config overrides: `python -m phi1_jax.sweep` (see __main__.py).

plan.py (specs -> checked, named trials; sweep.json), trials.py (a trial's status, lock and
trainer process), local.py and slurm.py (executors), report.py (table, CSV, Markdown, plots).
"""
