"""Where an engine's arrays live: the points split over devices, the data split by rows, and
streamed mini-batches fed to the device chunk by chunk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BatchFeed",
    "data_mesh",
    "place_points",
    "replicated",
    "rows",
    "shard_rows",
]


def rows(mesh, axis: int = 0):
    """Split along ``axis`` over the mesh axis ``"data"``."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(*([None] * axis), "data"))


def replicated(mesh):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


class BatchFeed:
    """Streamed batches for chunks of steps, on the device (row-sharded over ``mesh`` if given)."""

    def __init__(self, stream, seed: int, mesh=None):
        self.stream, self.seed, self.mesh = stream, seed, mesh

    def __call__(self, start: int, num_steps: int) -> dict:
        host = self.stream.batches(self.seed, start, num_steps)
        if self.mesh is None:
            return jax.device_put(host)
        n = self.mesh.devices.size
        return {k: jax.device_put(v, rows(self.mesh, 1) if v.shape[1] % n == 0
                                  else replicated(self.mesh))
                for k, v in host.items()}

    def shapes(self, num_steps: int) -> dict:
        return {k: jax.ShapeDtypeStruct((num_steps, self.stream.batch_size) + a.shape[1:], a.dtype)
                for k, a in self.stream.arrays.items()}


def data_mesh(devices):
    """A 1-d mesh ``"data"`` over ``devices`` (``"auto"``: all visible devices)."""
    from jax.sharding import Mesh

    devices = jax.devices() if isinstance(devices, str) and devices == "auto" else devices
    if devices is None or isinstance(devices, str) or len(list(devices)) < 2:
        raise ValueError("shard_data=True needs several devices: pass devices=[...] or run where "
                         f"jax.devices() lists several (got devices={devices!r})")
    return Mesh(np.asarray(list(devices)), ("data",))


def shard_rows(dynamic, plate_sizes, mesh):
    """Row-shard the array inputs whose leading axis is a plate's size (and divides evenly)."""
    sizes = set(plate_sizes)
    n = mesh.devices.size

    def put(x):
        split = jnp.ndim(x) >= 1 and x.shape[0] in sizes and x.shape[0] % n == 0
        return jax.device_put(x, rows(mesh) if split else replicated(mesh))

    return [put(x) for x in dynamic]


def place_points(state, num_points: int, devices):
    """Shard the state's arrays whose leading axis is the point axis (particles, or mixture
    components; size ``num_points``) over ``devices``, replicate the rest. ``devices``:
    ``"auto"`` (all visible devices when there are several and they divide ``num_points``
    evenly, else leave the state where it is), ``None`` (leave it) or a list of devices."""
    n = num_points
    if isinstance(devices, str):
        if devices != "auto":
            raise ValueError(f"devices must be 'auto', None or a list of devices, got {devices!r}")
        devices = jax.devices()
        if len(devices) < 2 or n % len(devices):
            return state
    elif devices is None:
        return state
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(devices) == 1:
        return jax.device_put(state, devices[0])
    if n % len(devices):
        raise ValueError(f"the {n} particles (or components) must be a multiple of the number of "
                         f"devices ({len(devices)}) to split them across them")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("particles",))
    split, same = (NamedSharding(mesh, PartitionSpec("particles")),
                   NamedSharding(mesh, PartitionSpec()))

    def put(x):
        if not isinstance(x, jax.Array):
            return x
        along = jnp.ndim(x) >= 1 and x.shape[0] == n
        return jax.device_put(x, split if along else same)

    return jax.tree.map(put, state)
