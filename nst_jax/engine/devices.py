"""Devices: meshes, multi-host start-up, and where each of the chunk's arguments lives.

Two ways to use several devices: a "batch" mesh splits the members of a batch over the devices
(each device runs whole images), a "rows" mesh splits each image by rows (one image too large
for one device; XLA's SPMD partitioner adds the convolutions' halo exchanges and the Gram
matrices' all-reduces). Where each of the chunk's arguments goes is engine/chunk_inputs.py's.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec



def join_cluster(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                 process_id: Optional[int] = None) -> None:
    """Make this process one host of a multi-host run (jax.distributed), before any other JAX work.

    With no arguments the cluster is detected from the environment (Slurm, Open MPI, TPU pods,
    or JAX_COORDINATOR_ADDRESS); afterwards jax.devices() lists every host's devices, so
    `batch_mesh()` spans them all. CPU hosts exchange data through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def batch_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "batch" over the first `num_devices` visible devices (default: all)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} visible")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), ("batch",))


def image_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "rows" over the first `num_devices` visible devices (default: all): each
    image is split by rows over them (one large image on several devices)."""
    return Mesh(batch_mesh(num_devices).devices, ("rows",))


def splits_rows(mesh: Optional[Mesh]) -> bool:
    """Whether `mesh` splits images by rows (an `image_mesh`) rather than the batch by member."""
    return mesh is not None and tuple(mesh.axis_names) == ("rows",)


SHARDS = ("batch", "image")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a run's members meet its devices: how many of each, and what is split over them.

    shard "batch" splits the members over the devices (each device runs whole images); "image"
    splits each image by rows (one image too large for one device). One device splits nothing.
    """

    members: int = 1
    devices: int = 1
    shard: str = "batch"

    def __post_init__(self) -> None:
        if self.shard not in SHARDS:
            raise ValueError(f"shard must be one of {', '.join(SHARDS)}, got {self.shard!r}")
        if self.members < 1 or self.devices < 1:
            raise ValueError(f"a layout needs at least one member and one device, got {self}")

    @classmethod
    def requested(cls, members: int, devices: int, shard: Optional[str] = None,
                  devices_asked: bool = False) -> "Layout":
        """The layout for flags: `shard` when given, else "image" when fewer members than the
        devices asked for (one image too large for one device), else "batch"."""
        if shard is None:
            shard = "image" if devices_asked and members < devices else "batch"
        return cls(members, devices, shard)

    @classmethod
    def of_mesh(cls, members: int, mesh: Optional[Mesh]) -> "Layout":
        """The layout a run on `mesh` (an image_mesh, a batch_mesh or None) has."""
        if mesh is None:
            return cls(members)
        return cls(members, mesh.size, "image" if splits_rows(mesh) else "batch")

    @property
    def splits_rows(self) -> bool:
        return self.shard == "image" and self.devices > 1

    @property
    def splits_members(self) -> bool:
        return self.shard == "batch" and self.devices > 1

    @property
    def per_device(self) -> int:
        """Members each device holds."""
        return self.members if self.shard == "image" else -(-self.members // self.devices)

    @property
    def batched(self) -> bool:
        """The vmapped chunk: several members on a device, or members split over devices (even
        one each)."""
        return self.members > 1 or self.splits_members

    def mesh(self) -> Optional[Mesh]:
        """The mesh this layout runs on: None for one device."""
        if self.devices == 1:
            return None
        return image_mesh(self.devices) if self.shard == "image" else batch_mesh(self.devices)


def row_shardings(tree: Any, mesh: Mesh, image_shape: Sequence[int]) -> Any:
    """NamedShardings for `tree` on a "rows" mesh: every leaf that ends in the image's shape
    (the image, Adam's moments, L-BFGS's (memory, H, W, C) history) split along the image's
    rows, everything else replicated.

    jit's arguments must divide evenly: for a height the device count does not divide, every
    leaf is replicated and only the network inside the loss is split (Objective.rows).
    """
    image_shape = tuple(image_shape)
    even = image_shape[0] % mesh.size == 0

    def sharding(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if even and len(shape) >= 3 and shape[-3:] == image_shape:
            return NamedSharding(mesh, PartitionSpec(*([None] * (len(shape) - 3) + ["rows"])))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map(sharding, tree)
