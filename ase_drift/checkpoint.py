"""Checkpoint files: ``{format_version, config, state_dict, metadata}``, written atomically and
read with ``torch.load(weights_only=True)`` so a file can never execute code."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Self

import torch

FORMAT_VERSION = 1
_KEYS = ("format_version", "config", "state_dict", "metadata")


class StoredConfig:
    """Mixin of the frozen config dataclasses a checkpoint's ``config`` holds: :meth:`as_dict`
    writes one, :meth:`from_dict` reads it back, ignoring keys the class does not have (a file
    written by a newer version), so that defaults fill fields an older file lacks."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Self:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


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


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` is a file in PyTorch's zip format (``torch.save``), judged by its
    contents, not its name (an npz is a zip too, but without ``data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl"
                       for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _not_a_checkpoint(path: Path) -> str:
    """Why ``path``, which torch cannot read, is not a checkpoint (never torch's own advice,
    which suggests unpickling arbitrary objects)."""
    if path.stat().st_size == 0:
        return f"{path} is empty"
    with open(path, "rb") as stream:
        head = stream.read(4096)
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path) and not is_torch_file(path):
            return (f"{path} is a zip file but not a PyTorch one (an npz data file?), not an "
                    f"ase_drift model or checkpoint")
        return f"{path} is truncated or corrupt and cannot be read as a checkpoint"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path} is not an ase_drift model or checkpoint (unknown binary data)"
    return (f"{path} is a text file (a data file of conformations?), not an ase_drift model or "
            f"checkpoint")


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read and validate a checkpoint; ``kind`` (e.g. 'drift-sampler') must match if given.

    Only tensors and plain data are ever unpickled (``weights_only=True``); a file holding
    other Python objects is refused, as are files that are not checkpoints (named in the
    :class:`CheckpointError`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not is_torch_file(path):
        raise CheckpointError(_not_a_checkpoint(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data; "
                              f"ase_drift never unpickles those (that could run code), so it "
                              f"is not an ase_drift checkpoint") from exc
    except Exception as exc:  # torch raises several types for damaged zip/pickle data
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read "
                              f"({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in _KEYS):
        raise CheckpointError(f"{path} is not an ase_drift checkpoint (expected keys {_KEYS})")
    if not isinstance(payload["metadata"], dict) or not isinstance(payload["config"], dict):
        raise CheckpointError(f"{path} has malformed metadata or config (not dictionaries)")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this "
                              f"ase_drift reads up to {FORMAT_VERSION}: upgrade ase_drift")
    found = payload["metadata"].get("kind")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} holds a {found!r} checkpoint, not a {kind!r} one")
    return payload
