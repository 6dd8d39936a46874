"""Decontamination: remove benchmark look-alikes (HumanEval, MBPP) from training documents.

`python -m phi1_jax.decontam` (see __main__.py); methods in index.py, trees in tree.py.
"""
