"""Synthetic textbooks and CodeExercises (`python -m phi1_jax.synth`)."""
