"""Figure 2.1 at phi-1-small's scale (350M, the model of the paper's Section 2.1), otherwise as
configs/recipes/phi1.py (its docstring says how to point it at The Stack and an endpoint):

    python -m phi1_jax.recipe run configs/recipes/phi1_small.py --root=/data/recipe --dry_run \
        --set llm.base_url=https://api.openai.com/v1 --set llm.model=gpt-4o-mini
"""

from phi1_jax.recipe import paper


def get_config():
  return paper.paper_scale_knobs("phi1_small", "configs/phi1_small.py")


def get_recipe(config):
  return paper.build(config)
