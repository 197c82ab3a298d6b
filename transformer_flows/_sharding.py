"""Scale-out through JAX itself: batches of systems and the tokens of one system over devices.

- `sharded_map(fn, *batched)`: `vmap(fn)` over a batch (e.g. β × starts of a phase diagram)
  whose leading axis is split over all devices of a 1-D mesh. Each device runs its share under
  `jax.shard_map` as a sequence of chunks (`lax.map` of `vmap`), so an adaptive solve's while
  loop is per chunk and per device: a lane waits only for the slowest lane of its own chunk,
  not of the whole batch. `order=` sorts the lanes first (e.g. by β) so chunks hold systems
  of similar stiffness.
- `TokenSharded(field, mesh)`: one large system whose n tokens are split over devices; each
  device gathers all tokens (O(n·d), never an n × n matrix) and evaluates the attention of its
  own queries, blockwise when n is large.
Multi-host: call `jax.distributed.initialize()` first; `jax.devices()` then spans all hosts
and the same code runs unchanged (see docs/scaling.md).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree

from ._attention import attend
from ._custom_types import Particles
from ._field._base import AbstractSphereField
from ._field._self_attention import AbstractAttentionField


def device_mesh(axis_name: str = "batch", devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (axis_name,))


def _single_axis(mesh: Mesh, name: str) -> str:
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError(
            f"`{name}` must be a 1-D jax.sharding.Mesh such as "
            f"transformer_flows.device_mesh(), got {mesh!r}."
        )
    return mesh.axis_names[0]


def _batch_size(batched) -> int:
    sizes = {leaf.shape[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(batched)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Every leaf of the batched arguments needs the same leading batch axis; got "
            f"leading sizes {sorted(map(str, sizes))}."
        )
    return sizes.pop()


def sharded_map(
    fn: Callable[..., PyTree],
    *batched: PyTree,
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    order: Array | None = None,
) -> PyTree:
    """`jax.vmap(fn)(*batched)`, with the batch split over the devices of `mesh`.

    **Arguments:**
    - `fn`: maps one element of the batch (leaves without the leading axis) to a pytree.
    - `batched`: pytrees whose leaves share a leading batch axis B.
    - `mesh`: a 1-D mesh (default `device_mesh()`, all devices).
    - `chunk_size`: lanes vmapped together on one device; chunks run in sequence, each to its
      own slowest lane. Default: all of the device's share in one chunk.
    - `order`: optional (B,) sort key (e.g. β); lanes are grouped by it and results returned
      in the original order.

    The batch is padded (with copies of the last element) to a multiple of
    devices × chunk_size; padded results are dropped. Call it under `jax.jit` or not.
    """
    mesh = device_mesh() if mesh is None else mesh
    axis = _single_axis(mesh, "mesh")
    size = _batch_size(batched)
    devices = mesh.size
    per_device = -(-size // devices)
    if chunk_size is None:
        chunk_size = per_device
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
    chunk_size = min(chunk_size, per_device)
    per_device = -(-per_device // chunk_size) * chunk_size
    padded = per_device * devices

    permutation = None
    if order is not None:
        if jnp.shape(order) != (size,):
            raise ValueError(
                f"`order` must have shape ({size},) (one key per lane), got {jnp.shape(order)}."
            )
        permutation = jnp.argsort(order)
        batched = jax.tree.map(lambda a: a[permutation], batched)
    index = jnp.minimum(jnp.arange(padded), size - 1)
    batched = jax.tree.map(lambda a: a[index], batched)

    def local(*shard):
        chunks = jax.tree.map(lambda a: a.reshape(-1, chunk_size, *a.shape[1:]), shard)
        out = jax.lax.map(lambda c: jax.vmap(fn)(*c), chunks)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)

    spec = PartitionSpec(axis)
    batched = jax.tree.map(
        lambda a: (
            jax.device_put(a, NamedSharding(mesh, spec))
            if not isinstance(a, jax.core.Tracer)
            else a
        ),
        batched,
    )
    out = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(*batched)
    out = jax.tree.map(lambda a: a[:size], out)
    if permutation is None:
        return out
    inverse = jnp.argsort(permutation)
    return jax.tree.map(lambda a: a[inverse], out)


def shard_tokens(x: Particles, mesh: Mesh) -> Particles:
    """Place tokens (n, d) with the n axis split over the 1-D `mesh`."""
    axis = _single_axis(mesh, "mesh")
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis, None)))


class TokenSharded(AbstractSphereField):
    """`field` with its n tokens split over the devices of a 1-D `mesh` (n divisible by the
    number of devices). Each device all-gathers the tokens (O(n·d) memory) and evaluates
    the attention of its own n/devices queries with `field.attention` (blockwise for large
    n). Solve it with `solve(TokenSharded(field, mesh), shard_tokens(x0, mesh), ts)`.
    """

    field: AbstractAttentionField
    mesh: Mesh = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.field, AbstractAttentionField):
            raise ValueError(
                f"`field` must be SelfAttention or UnnormalizedSelfAttention, got "
                f"{type(self.field).__name__}."
            )
        if not self.field.mask.is_trivial:
            raise ValueError(
                f"`field` has a mask ({self.field.mask}); token sharding splits the queries "
                "from the keys and carries no token positions, so masked fields are not "
                "sharded: solve the field unsharded."
            )
        if self.field.has_biases:
            raise ValueError(
                "`field` has query, key or output biases, which token sharding does not "
                "evaluate; solve the field unsharded."
            )
        _single_axis(self.mesh, "mesh")

    def jump_times(self):
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)
        if x.shape[0] % self.mesh.size:
            raise ValueError(
                f"`x0` has n={x.shape[0]} tokens, not divisible by the {self.mesh.size} devices "
                f"of `mesh`; use a multiple of {self.mesh.size} tokens."
            )

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        axis = self.mesh.axis_names[0]
        weights = self.field.weights_at(t)
        normalized, log_shift = self.field._normalization()
        method = self.field.attention

        def local(x_local, beta, weights, log_shift):
            keys = jax.lax.all_gather(x_local, axis, tiled=True)
            return attend(
                x_local,
                beta,
                *weights,
                normalized=normalized,
                log_shift=log_shift,
                method=method,
                keys=keys,
            )

        tokens, replicated = PartitionSpec(axis, None), PartitionSpec()
        return jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(tokens, replicated, replicated, replicated),
            out_specs=tokens,
            check_vma=False,
        )(x, self.field.beta, weights, jnp.asarray(log_shift, x.dtype))
