"""Curation by educational value: LLM annotation, embeddings, a classifier, filtering and dedup.

`python -m phi1_jax.curate {annotate,embed,train-classifier,filter} ...`; see __main__.py.
"""
