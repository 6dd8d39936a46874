"""`python -m phi1_jax.train --config=configs/X.py --workdir=DIR [--config.FIELD=VALUE ...]`."""

from absl import app

from phi1_jax.train import main

app.run(main.main, flags_parser=main.parse_flags)
