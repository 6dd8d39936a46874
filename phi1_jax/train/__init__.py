"""The trainer, `python -m phi1_jax.train` (main.py), in the order a run goes through it.

checks.py (the config) -> inputs.py (data, eval batches) -> workdir.py (the run folder) -> state.py
(optimizer, sharded state) -> step.py (the jitted steps) -> loop.py (step, log, evaluate, checkpoint)
with checkpoints.py (Orbax), evaluate.py (eval loss, HumanEval), flops.py (MFU) and metrics.py
(metrics.jsonl, TensorBoard, the progress line; no JAX, so the sweep imports it).
"""
