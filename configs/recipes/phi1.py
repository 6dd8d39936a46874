"""Figure 2.1 at phi-1's scale (1.3B): The Stack's Python and StackOverflow, a real LLM endpoint, the
paper's steps and tokens (configs/phi1.py: 36,000 steps x 1024 x 2048; configs/phi1_finetune.py).
Print the plan and its cost first:

    python -m phi1_jax.recipe run configs/recipes/phi1.py --root=/data/recipe --dry_run \
        --set llm.base_url=https://api.openai.com/v1 --set llm.model=gpt-4o-mini

raw_inputs: The Stack v1 (`bigcode/the-stack-dedup`, data/python/*.parquet, code in `content`, ids in
`hexsha`) and StackOverflow exported to parquet with the same two columns. The Stack v2 and
Stack-Edu carry blob ids only: fetch their contents into a `content` column first. The key of the
endpoint is read from $OPENAI_API_KEY. Training steps run on SLURM with `--set launcher=slurm`
(and `run --sbatch_args='--nodes=1 ...'`).
"""

from phi1_jax.recipe import paper


def get_config():
  return paper.paper_scale_knobs("phi1", "configs/phi1.py")


def get_recipe(config):
  return paper.build(config)
