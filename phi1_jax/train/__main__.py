"""`python -m phi1_jax.train --config=configs/X.py --workdir=DIR [--config.FIELD=VALUE ...]`."""

from absl import app, flags

from phi1_jax.train import main

flags.adopt_module_key_flags(main)  # --help lists the trainer's flags, not only --helpfull
app.run(main.main, flags_parser=main.parse_flags)
