"""Checkpoint files: ``{format_version, config, state_dict, metadata}``, written atomically and
read with ``torch.load(weights_only=True)`` so a file can never execute code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT_VERSION = 1
_KEYS = ("format_version", "config", "state_dict", "metadata")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or not an ase_drift checkpoint."""


def save_checkpoint(path: str | Path, config: dict, state_dict: dict, metadata: dict) -> Path:
    """Write the checkpoint to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"format_version": FORMAT_VERSION, "config": config,
               "state_dict": state_dict, "metadata": metadata}
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read and validate a checkpoint; ``kind`` (e.g. 'drift-sampler') must match if given."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged zip/pickle data
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in _KEYS):
        raise CheckpointError(f"{path} is not an ase_drift checkpoint (expected keys {_KEYS})")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this "
                              f"ase_drift reads up to {FORMAT_VERSION}: upgrade ase_drift")
    found = payload["metadata"].get("kind")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} holds a {found!r} checkpoint, not a {kind!r} one")
    return payload
