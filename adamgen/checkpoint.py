"""Optimizer state on disk: one .npz file per state, written atomically.

    adamgen.checkpoint.save("opt.npz", state)                       # any target's state
    state = opt.restore(adamgen.checkpoint.load("opt.npz", params), params)

The file holds the raw counter and every kept slot params-shaped (a packed state is unpacked
first), in the params' leaf order, with each leaf's tree path: a checkpoint taken on one target
resumes on any other, and loading it for a model whose tree changed names the first leaf that
differs. bfloat16 leaves are stored as their uint16 bits (NumPy's format has no bfloat16). No
pickles: `np.load(..., allow_pickle=False)` reads it.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from adamgen.state import SLOT_TO_FIELD, AdamState

FORMAT = "adamgen.checkpoint/1"
FIELDS = tuple(SLOT_TO_FIELD.values())
# dtypes .npz cannot name -> (the bits they are stored as, the dtype)
_BITS = {"bfloat16": (np.uint16, ml_dtypes.bfloat16)}


def save(path, state: AdamState) -> Path:
    """Write `state` to `path` (a temporary file in the same folder, then renamed over it, so a
    failed save leaves an existing checkpoint as it was). Returns the path."""
    if not isinstance(state, AdamState):
        raise TypeError(f"state must be an adamgen.AdamState, got {type(state).__name__}")
    path = Path(path)
    state = state.unpacked()
    arrays: dict[str, np.ndarray] = {"iterations": np.asarray(jax.device_get(state.iterations))}
    meta: dict = {"format": FORMAT, "fields": [], "paths": None, "dtypes": {}}
    for field in FIELDS:
        value = getattr(state, field)
        if value is None:
            continue
        with_path, _ = jax.tree_util.tree_flatten_with_path(value)
        paths = [jax.tree_util.keystr(p) for p, _ in with_path]
        if meta["paths"] is None:
            meta["paths"] = paths
        elif paths != meta["paths"]:
            raise ValueError(f"state.{field} has another tree structure than state.{meta['fields'][0]}")
        meta["fields"].append(field)
        for i, (_, leaf) in enumerate(with_path):
            arr = np.asarray(jax.device_get(leaf))
            key = f"{field}/{i}"
            meta["dtypes"][key] = arr.dtype.name
            arrays[key] = arr.view(_BITS[arr.dtype.name][0]) if arr.dtype.name in _BITS else arr
    arrays["meta"] = np.array(json.dumps(meta))
    # A fresh name beside the target (created, not opened over: the umask's mode, as the file
    # itself would get), flushed to disk before it replaces the old checkpoint.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path, params) -> AdamState:
    """The state saved at `path`, its slots shaped like `params` (NumPy arrays); pass it to
    `opt.restore(state, params)`, which checks it against the optimizer and puts it in its form."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an .npz archive")
        with loaded as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            data = {key: z[key] for key in z.files}
        wanted = ["iterations"] + [f"{f}/{i}" for f in meta["fields"] for i in range(len(meta["paths"]))]
        missing = [key for key in wanted if key not in data]
        if missing:
            raise ValueError(f"the arrays {missing[:3]} are missing")
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not an adamgen checkpoint: {err}") from None
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    if meta["paths"] != paths:
        raise ValueError(f"{path} was saved for another params tree: {_first_difference(meta['paths'], paths)}")
    fields = {}
    for field in meta["fields"]:
        leaves = []
        for i in range(len(paths)):
            key = f"{field}/{i}"
            arr = data[key]
            dtype = meta["dtypes"][key]
            leaves.append(arr.view(_BITS[dtype][1]) if dtype in _BITS else arr)
        fields[field] = jax.tree_util.tree_unflatten(treedef, leaves)
    return AdamState(iterations=data["iterations"], **fields)


def _first_difference(saved: list[str], now: list[str]) -> str:
    for i, (a, b) in enumerate(zip(saved, now)):
        if a != b:
            return f"leaf {i} is {a} in the checkpoint and {b} in the params"
    return f"the checkpoint has {len(saved)} leaves, the params {len(now)}"
