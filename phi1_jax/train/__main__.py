"""`python -m phi1_jax.train --config=configs/X.py --workdir=DIR [--config.FIELD=VALUE ...]`."""

from absl import app

from phi1_jax.train import loop

app.run(loop.main, flags_parser=loop.parse_flags)
