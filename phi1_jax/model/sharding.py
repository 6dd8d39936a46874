"""Device meshes and logical-axis sharding rules.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded) and `tensor` (tensor parallel). Parameters carry logical axis names
(`logical_axes` metadata, see model.py); a rules table maps each logical name to mesh axes.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Activations: batch over the data-parallel axes, heads and MLP hidden over `tensor`, the rest whole.
ACTIVATION_RULES = (
  ("batch", BATCH_AXES),
  ("length", None),
  ("embed", None),
  ("heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
  """Sizes of (data, fsdp, tensor); one size may be -1 to take the remaining devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive, at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {n_devices} devices")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, found {n_devices}")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes, shape, rules, mesh) -> P:
  """PartitionSpec for a tensor with these logical axes; a dimension that the mesh axes do not
  divide stays replicated (small vocabularies, odd head counts)."""
  table = dict(rules)
  spec = []
  for name, dim in zip(logical_axes, shape):
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
    axes = table[name]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    spec.append(None if not axes or dim % size else (axes[0] if len(axes) == 1 else axes))
  return P(*spec)


def constrain(x, logical_axes):
  """Pins an activation's sharding (by ACTIVATION_RULES) when traced under a mesh with our axes.

  Without it XLA may pick, inside the layer scan, a layout that all-gathers the batch. Outside a
  mesh context (`jax.set_mesh`), or with a mesh lacking these axes, it returns x unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, ACTIVATION_RULES, mesh))


def on_mesh(fn, mesh):
  """fn traced under `mesh` (inside jit too), so `constrain` in the model sees the mesh's axes."""

  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def param_shardings(abstract_model, mesh, rules):
  """Pure-dict tree of NamedShardings for the model's parameters, from their logical axes."""
  state = nnx.state(abstract_model, nnx.Param)
  specs = jax.tree.map(
    lambda v: logical_to_spec(v.logical_axes, v.shape, rules, mesh),
    state,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return jax.tree.map(lambda s: NamedSharding(mesh, s), nnx.to_pure_dict(specs), is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh, leading_dims: int = 0) -> NamedSharding:
  """Batch dimension (after `leading_dims` unsharded ones, e.g. microbatches) over data and fsdp."""
  return NamedSharding(mesh, P(*([None] * leading_dims), BATCH_AXES))


def global_batch(local_batch: np.ndarray, mesh, leading_dims: int = 0) -> jax.Array:
  """Assembles the global batch from each process's rows (the batch axis is `leading_dims`)."""
  sharding = batch_sharding(mesh, leading_dims)
  return jax.make_array_from_process_local_data(sharding, local_batch)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
