"""A sweep's folder: the manifest, the image selection, and one file per finished work unit.

Layout of DIR::

    manifest.json              configuration (compared on every run), sweep seed, environment of the first run
    selection.json             the data set images of the sweep with their labels
    units/traverse/rRRR_bBBBBB.safetensors   LST outputs, confidences, costs, distances of one round x batch
    units/triangles/bBBBBB.safetensors       triangle statistics of one batch of sources
    images/rRRR/SOURCE_to_TARGET.png          LST outputs as PNG (only with save_images), named by the images'
                                              own names (see :func:`lst_fast.sweep.runner.image_stems`)

The tensors of each kind of unit file are listed in :mod:`lst_fast.sweep.schema`; :mod:`lst_fast.sweep.folder`
reads a sweep folder and judges its unit files. Every file is written to a temporary name in the same folder and
renamed into place, so a file under its final name is always complete; files are created with the mode the
umask leaves (0o644 under the usual 0o022). Unit files also carry their config id and a SHA-256 of their tensors,
so a truncated, damaged or foreign unit file is detected and redone, and their provenance (what computed them,
see :mod:`lst_fast.sweep.provenance`), which is not checked: units without it (older sweeps) are as good.

A write that fails (a full disk, a file size limit, a read-only folder) raises :class:`StorageError`, naming the
file and the cause, and leaves no temporary file behind; the files already finished stay as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lst_fast.sweep.provenance import decode as decode_provenance
from lst_fast.sweep.provenance import encode as encode_provenance

FORMAT = "1"
KINDS = ("traverse", "triangles")


class CorruptUnit(ValueError):
    """A unit file exists but cannot be trusted (truncated, damaged, or from another configuration)."""


class StorageError(OSError):
    """A file of the sweep folder could not be written (e.g. no space left on the device, file too large)."""

    def __str__(self) -> str:
        return self.strerror  # "cannot write PATH: CAUSE", without OSError's "[Errno N]" prefix


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turns an OSError raised while writing ``path`` into a :class:`StorageError` that names it and the cause.

    Args:
        path: the file being written (its final name, the one the user knows).

    Raises:
        StorageError: the write failed; its message is one line, ``cannot write PATH: CAUSE``.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        cause = os.strerror(err.errno) if err.errno else str(err)
        raise StorageError(err.errno, f"cannot write {path}: {cause}") from err


@dataclass(frozen=True)
class StoredUnit:
    """A unit file's contents: its tensors and its provenance (None for units written before it was recorded)."""

    tensors: dict[str, torch.Tensor]
    provenance: dict | None


def config_id(config: dict) -> str:
    """A short fingerprint of a configuration dict."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class SweepStore:
    """Reads and writes the files of one sweep folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.selection_path = self.root / "selection.json"

    def read_existing(self) -> tuple[dict, dict]:
        """The manifest and the image selection of this folder, which must hold a sweep."""
        manifest, selection = self.read_json(self.manifest_path), self.read_json(self.selection_path)
        if manifest is None or selection is None:
            raise FileNotFoundError(f"{self.root} is not a sweep folder (no manifest.json and selection.json)")
        return manifest, selection

    def unit_path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.root / "units" / kind / f"{name}.safetensors"

    def image_path(self, round_index: int, source: str, target: str) -> Path:
        """Where the PNG of the LST output of round ``round_index`` from image ``source`` to ``target`` (their
        names) goes."""
        return self.root / "images" / f"r{round_index:03d}" / f"{source}_to_{target}.png"

    # JSON files written once: the first writer wins, everybody then reads the same file -------------------

    def read_json(self, path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); remove it or use another output folder") from None

    def write_json_once(self, path: Path, content: dict) -> dict:
        """Create ``path`` with ``content`` unless it exists; return what the file holds afterwards.

        The file is written under a temporary name and hard-linked into place, which fails if another
        process got there first (an atomic create-if-absent, also on shared file systems).

        Raises:
            StorageError: the file could not be written (nothing is left under a temporary name).
        """
        tmp = self._temporary(path)
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _write_new(tmp, (json.dumps(content, indent=2) + "\n").encode())
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return self.read_json(path)

    # Unit files ----------------------------------------------------------------------------------------

    def write_unit(
        self, kind: str, name: str, tensors: dict[str, torch.Tensor], config: str, provenance: dict | None = None
    ) -> Path:
        """Atomically write one finished unit (with ``provenance``: what computed it).

        Raises:
            StorageError: the file could not be written (nothing is left under a temporary name).
        """
        path = self.unit_path(kind, name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {"format": FORMAT, "kind": kind, "unit": name, "config": config, "digest": tensor_digest(tensors)}
        if provenance is not None:
            metadata["provenance"] = encode_provenance(provenance)
        content = save_safetensors(tensors, metadata=metadata)
        self.write_file(path, lambda tmp: _write_new(tmp, content, sync=True))
        return path

    def write_file(self, path: Path, write: Callable[[Path], None]) -> None:
        """Write ``path`` through ``write`` (which gets a temporary name in the same folder), then rename it.

        Raises:
            StorageError: the file could not be written (nothing is left under a temporary name).
        """
        tmp = self._temporary(path)
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    def read_unit(self, kind: str, name: str, config: str) -> dict[str, torch.Tensor] | None:
        """The unit's tensors; None if it was never written; :class:`CorruptUnit` if it cannot be trusted."""
        stored = self.load_unit(kind, name, config)
        return None if stored is None else stored.tensors

    def load_unit(self, kind: str, name: str, config: str) -> StoredUnit | None:
        """The unit's tensors and provenance, read once from its file.

        Args:
            kind, name: the unit (one of :data:`KINDS`, and its plan name).
            config: the config id the unit must carry (the manifest's).

        Returns:
            The unit, or None if it was never written.

        Raises:
            CorruptUnit: the file is truncated, damaged, or belongs to another unit or configuration.
        """
        path = self.unit_path(kind, name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            tensors = load_safetensors(raw)
            metadata = _metadata(raw)
        except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptUnit(f"{path}: unreadable ({err})") from None
        expected = {"format": FORMAT, "kind": kind, "unit": name, "config": config}
        wrong = {k: metadata.get(k) for k, v in expected.items() if metadata.get(k) != v}
        if wrong:
            raise CorruptUnit(f"{path}: belongs elsewhere ({wrong}, expected {expected})")
        if metadata.get("digest") != tensor_digest(tensors):
            raise CorruptUnit(f"{path}: contents do not match their checksum")
        return StoredUnit(tensors, decode_provenance(metadata.get("provenance")))

    def read_provenance(self, kind: str, name: str) -> dict | None:
        """The provenance recorded in a unit file (only its header is read); None if the file has none."""
        with open(self.unit_path(kind, name), "rb") as f:
            head = f.read(8)
            header = head + f.read(int.from_bytes(head, "little")) if len(head) == 8 else head
        try:
            return decode_provenance(_metadata(header).get("provenance"))
        except (ValueError, UnicodeDecodeError):  # a damaged header: read_unit reports the unit as corrupt
            return None

    def finished(self, kind: str, name: str) -> bool:
        """Whether a unit file exists under its final name (cheap; :meth:`read_unit` validates it)."""
        return self.unit_path(kind, name).exists()

    @staticmethod
    def _temporary(path: Path) -> Path:
        return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_new(path: Path, content: bytes, *, sync: bool = False) -> None:
    """Create ``path`` (which must not exist) holding ``content``, with the mode the umask leaves of 0o666 like
    any file a program creates; ``sync``: on disk before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def _metadata(raw: bytes) -> dict:
    """The ``__metadata__`` of a safetensors buffer (header: 8-byte little-endian length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file shorter than its header")
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length].decode("utf-8")).get("__metadata__", {})
