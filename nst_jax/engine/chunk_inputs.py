"""The one builder of the compiled chunk's inputs: every run, the video, the memory estimate and
the benchmarks get theirs from `build_chunk_inputs`, so what is timed or estimated is what runs.

A run's members each bring a start image, their style Gram matrices and their loss weights
(`MemberInputs`); the builder stacks them along a member axis when the chunk is batched, pads them
to fill a member-split mesh, makes the optimizer's state, and places everything on the devices
(`place`: the one place that says where each argument lives). It works on arrays (a run) and on
jax.ShapeDtypeStructs (the memory estimate: nothing allocated) alike.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.stages import Wrapped

from nst_jax.engine.devices import row_shardings, splits_rows
from nst_jax.engine.optimize import OptimizerSpec, chunk_program, state_program
from nst_jax.loss.objective import LossWeights, Objective, RegionGuides, Targets, TemporalTarget
from nst_jax.model.extent import Extent
from nst_jax.weights.params_file import Params


# An array, or its shape and dtype (the memory estimate's abstract inputs).
ArrayLike = Union[jax.Array, np.ndarray, jax.ShapeDtypeStruct]


@dataclasses.dataclass(frozen=True)
class MemberInputs:
    """One member's part of the chunk's inputs (arrays, or jax.ShapeDtypeStructs)."""

    start: ArrayLike  # (H, W, C) pixels in [0, pixel_range]
    style: Mapping[str, ArrayLike]  # {layer: Gram matrix} of its style (or blend)
    weights: LossWeights
    temporal: Optional[TemporalTarget] = None  # a video frame's (unbatched runs only)
    guides: Optional[RegionGuides] = None  # its regions (style then (R, C, C) per layer)


@dataclasses.dataclass(frozen=True)
class ChunkInputs:
    """The chunk's program and its arguments, placed as the run places them.

    `program()(pixels, opt_state, num_steps, *loss_args)` is one call of the compiled loop.
    """

    objective: Objective  # with `rows` set when each image is split by rows
    spec: OptimizerSpec
    batched: bool
    members: int  # real members; the arrays may hold padding copies after them
    pixels: ArrayLike  # (H, W, C), or (members, H, W, C) batched
    opt_state: optax.OptState
    params: Params
    targets: Targets
    weights: LossWeights

    def program(self) -> Wrapped:
        return chunk_program(self.objective, self.spec, self.batched)

    @property
    def start(self) -> Tuple[jax.Array, optax.OptState]:
        """(pixels, optimizer state) to run from: arrays (the estimate's abstract inputs do not run)."""
        if not isinstance(self.pixels, jax.Array):
            raise TypeError(f"these chunk inputs are not on a device: {type(self.pixels).__name__}")
        return self.pixels, self.opt_state

    @property
    def loss_args(self) -> Tuple[Params, Targets, LossWeights]:
        """The chunk's arguments after the step count: traced, the same for every chunk."""
        return self.params, self.targets, self.weights


def _is_abstract(tree: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)


def _stack(trees: Sequence[Any]) -> Any:
    """Member trees -> one tree with a leading member axis. Arrays are stacked by numpy on the
    host: jnp.stack outside jit compiles a program per leaf shape (five Gram sizes and the image)."""
    def stack(*leaves):
        if isinstance(leaves[0], jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype)
        return np.stack([np.asarray(leaf) for leaf in leaves])
    return jax.tree_util.tree_map(stack, *trees)


def build_chunk_inputs(objective: Objective, spec: OptimizerSpec, params: Params, content: Dict[str, Any],
                       members: Sequence[MemberInputs], mesh: Optional[Mesh] = None,
                       batched: Optional[bool] = None, extent: Optional[Extent] = None) -> ChunkInputs:
    """The chunk's inputs for `members` sharing `params` and the `content` targets.

    `extent`: the true image inside the members' padded start images and content targets (shape
    buckets; shared by the members), None where they are the image's own shape.

    `batched` (default: several members, or a member-split mesh) chooses the vmapped chunk; a
    member-split mesh gets copies of the last member until its size divides the count. `mesh`:
    a batch_mesh, an image_mesh (`objective.rows` is then set) or None.
    """
    if not members:
        raise ValueError("the chunk needs at least one member")
    splits_members = mesh is not None and not splits_rows(mesh)
    if batched is None:
        batched = len(members) > 1 or splits_members
    if not batched and len(members) > 1:
        raise ValueError(f"{len(members)} members need the batched chunk")
    if batched and any(member.temporal is not None for member in members):
        raise ValueError("temporal targets are for unbatched runs (a video's frames)")
    padded = list(members)
    if splits_members:
        assert mesh is not None
        padded += [members[-1]] * (-len(members) % mesh.size)
    if (members[0].guides is None) != all(member.guides is None for member in members):
        raise ValueError("every member has regions, or none")
    if batched:
        pixels, style, weights, guides = _stack([(m.start, m.style, m.weights, m.guides) for m in padded])
        temporal = None
    else:
        (member,) = members
        pixels, style, weights, temporal, guides = (member.start, member.style, member.weights, member.temporal,
                                                    member.guides)
    image_shape = tuple(members[0].start.shape)
    if _is_abstract(pixels):
        opt_state = jax.eval_shape(state_program(spec, batched), pixels)
    else:
        style, pixels, weights, temporal, guides = jax.device_put((style, pixels, weights, temporal, guides))
        opt_state = state_program(spec, batched)(pixels)
    inputs = ChunkInputs(objective, spec, batched, len(members), pixels, opt_state, params,
                         Targets(content, style, temporal, extent, guides), weights)
    return place(inputs, mesh, image_shape)


def place(inputs: ChunkInputs, mesh: Optional[Mesh], image_shape: Tuple[int, ...]) -> ChunkInputs:
    """`inputs` placed on `mesh` as a run places them.

    No mesh: unchanged. A "rows" mesh: the image and the optimizer state shaped like it split by
    rows (`devices.row_shardings`), the rest on every device, and the objective told to split
    the network's input too. A "batch" mesh: everything with a member axis (image, state, style
    Grams, loss weights) split along it; params and content targets on every device.
    """
    if mesh is None:
        return inputs
    replicated = NamedSharding(mesh, PartitionSpec())
    args = (inputs.pixels, inputs.opt_state, inputs.params, inputs.targets, inputs.weights)
    objective = inputs.objective
    if splits_rows(mesh):
        split = row_shardings((inputs.pixels, inputs.opt_state), mesh, image_shape)
        shardings: Any = (split[0], split[1], replicated, replicated, replicated)
        objective = dataclasses.replace(objective, rows=mesh)
    else:
        members = NamedSharding(mesh, PartitionSpec("batch"))
        extent = None if inputs.targets.extent is None else replicated
        guides = None if inputs.targets.guides is None else members
        shardings = (members, members, replicated, Targets(replicated, members, None, extent, guides), members)
    pixels, opt_state, params, targets, weights = jax.tree_util.tree_map(
        lambda sharding, subtree: _put(subtree, sharding), shardings, args,
        is_leaf=lambda node: isinstance(node, NamedSharding))
    return dataclasses.replace(inputs, objective=objective, pixels=pixels, opt_state=opt_state, params=params,
                               targets=targets, weights=weights)


def _put(subtree, sharding):
    """device_put for arrays; for jax.ShapeDtypeStructs (memory estimates) the sharding attached."""
    if _is_abstract(subtree):
        return jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), subtree)
    return jax.device_put(subtree, sharding)
