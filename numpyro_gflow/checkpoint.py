"""Save an engine's state to disk and load it back, to continue a run later.

Format: one ``.npz`` file (NumPy's zip of arrays), written by `save_state`:

* ``leaf_0`` ... ``leaf_{k-1}``: the state's array leaves in ``jax.tree.leaves`` order; a JAX
  PRNG key is stored as its raw key data (``jax.random.key_data``);
* ``__meta__``: JSON with the format version, the leaf count, and for each key leaf its index
  and PRNG implementation name;
* ``__treedef__``: the tree structure (NamedTuple classes of numpyro_gflow and optax), pickled.
  Classes are referenced by import path, so load with compatible numpyro_gflow/optax versions.

Only the state is saved: the model and its data are not (pass them to ``run`` again).
``engine.run(key, m, *args, init_state=load_state(path))`` then continues exactly where the
saved run stopped (``k`` steps, save, load, ``m`` steps == ``k + m`` steps, bit for bit).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "save_state",
    "load_state",
]

FORMAT_VERSION = 1


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_state(path, state) -> Path:
    """Write ``state`` (an engine's ``result.state``) to ``path`` (``.npz`` added if missing)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    leaves, treedef = jax.tree.flatten(state)
    arrays, keys = {}, []
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            keys.append({"index": i, "impl": str(jax.random.key_impl(leaf))})
            leaf = jax.random.key_data(leaf)
        arrays[f"leaf_{i}"] = np.asarray(leaf)
    meta = {"format_version": FORMAT_VERSION, "num_leaves": len(leaves), "keys": keys}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["__treedef__"] = np.frombuffer(pickle.dumps(treedef), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())   # one write: no half-written file on disk under the name
    return path


def load_state(path):
    """Read a state written by `save_state`; pass it to ``run(..., init_state=...)``."""
    with np.load(Path(path), allow_pickle=False) as f:
        meta = json.loads(bytes(f["__meta__"]).decode())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {meta.get('format_version')!r}, "
                             f"this numpyro_gflow reads {FORMAT_VERSION}")
        treedef = pickle.loads(bytes(f["__treedef__"]))
        leaves = [jnp.asarray(f[f"leaf_{i}"]) for i in range(meta["num_leaves"])]
    for k in meta["keys"]:
        leaves[k["index"]] = jax.random.wrap_key_data(leaves[k["index"]], impl=k["impl"])
    return jax.tree.unflatten(treedef, leaves)
