"""A prepared image folder: decoded, cropped and resized once into a memory-mapped array.

``gantui prepare DIR --size 64`` decodes every image of ``DIR`` exactly as training does
(:class:`~gantui.data.sources.ImageFolder`) and writes, under the cache root::

    images/<folder>-<hash>/<size>px-<rgb|grey>/
        manifest.json   the folder's files (relative path, size, mtime) and the array's shape;
                        for a class-labelled folder (ROOT/<class>/...) also the class names
                        and each file's label (-1 outside the class folders)
        images.u8       uint8 (N, C, S, S), row i = file i of the manifest
        ok.u8           one byte per file: 1 decoded, 0 unreadable (skipped, as training does)
        progress.json   how many files are done; a killed prepare resumes from here

Training from the cache gives the same batches, bit for bit, as decoding the files (same
pixels, same epoch permutation, same skipped files), so a run may switch between the two on
resume. A cache whose folder gained, lost or changed files is refused: it would train on
something else than the folder says. A conditional run reads the labels from the cache and
trains on the files of the class folders alone, as decoding them would.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gantui.data import datasets
from gantui.data.sources import (
    WHOLE,
    DataError,
    ImageFolder,
    Shard,
    epoch_permutation,
    find_images,
    worker_init_fn,
)
from gantui.files import atomic_write_bytes, cache_root, read_json_dict

CACHE_VERSION = 1
CHUNK = 256
"""Images decoded between two progress records."""
PREFETCH_BATCHES = 4
"""Batches gathered ahead of the trainer by the cache's reader thread."""

Listing = list[tuple[str, int, int]]
"""``(relative path, size in bytes, mtime in ns)`` per image file, in training order."""


def listing(root: Path) -> Listing:
    """The image files of ``root`` as training orders them, with their sizes and mtimes."""
    out = []
    for path in find_images(root):
        st = path.stat()
        out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def cache_dir(root: Path, size: int, channels: int, base: Path | None = None) -> Path:
    """Where the cache of ``root`` at ``size`` px and ``channels`` lives."""
    resolved = str(Path(root).expanduser().resolve())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name)[:40] or "root"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    kind = "rgb" if channels == 3 else "grey"
    return cache_root(base) / "images" / f"{slug}-{digest}" / f"{size}px-{kind}"


def _difference(old: Listing, new: Listing) -> str:
    """``3 added, 1 removed, 2 changed`` between two listings ('' when equal)."""
    before = {name: (size, mtime) for name, size, mtime in old}
    after = {name: (size, mtime) for name, size, mtime in new}
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    changed = sum(1 for name in before.keys() & after.keys() if before[name] != after[name])
    parts = [f"{n} {what}" for n, what in ((added, "added"), (removed, "removed"),
                                           (changed, "changed")) if n]
    return ", ".join(parts)


def _read_listing(manifest: dict[str, Any]) -> Listing | None:
    files = manifest.get("files")
    if not isinstance(files, list):
        return None
    out = []
    for entry in files:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and all(type(v) is int and v >= 0 for v in entry[1:])):
            return None
        out.append((entry[0], entry[1], entry[2]))
    return out


@dataclass
class Prepared:
    """An opened, complete cache that matches its folder."""

    path: Path
    images: np.ndarray
    """uint8 (N, C, S, S), memory-mapped read-only."""
    ok: np.ndarray
    """bool (N,): False for files that could not be decoded."""
    labels: np.ndarray | None = None
    """int64 (N,): each file's class, -1 outside the class folders; None when the folder
    is not class-labelled (or was prepared before labels were cached)."""
    class_names: tuple[str, ...] = ()
    """The classes in label order (empty without labels)."""

    @property
    def unreadable(self) -> int:
        """Files skipped when the cache was prepared."""
        return int((~self.ok).sum())


def _shape_of(manifest: dict[str, Any]) -> tuple[int, int, int, int] | None:
    shape = manifest.get("shape")
    if (isinstance(shape, list) and len(shape) == 4
            and all(type(v) is int and 0 < v < 2**40 for v in shape)):
        return tuple(shape)  # type: ignore[return-value]
    return None


def open_prepared(root: Path, size: int, channels: int, files: Listing | None = None,
                  base: Path | None = None) -> Prepared | None:
    """The prepared cache of ``root`` for this size, or None when there is none.

    Raises:
        DataError: a cache exists but is incomplete, damaged, or no longer matches the
            folder; the message names the fix.
    """
    where = cache_dir(root, size, channels, base)
    manifest_path = where / "manifest.json"
    if not manifest_path.exists():
        return None
    redo = f"rerun `gantui prepare {root} --size {size}`, or train with --set data_cache=false"
    manifest = read_json_dict(manifest_path)
    cached = _read_listing(manifest) if manifest is not None else None
    shape = _shape_of(manifest) if manifest is not None else None
    if (manifest is None or cached is None or shape is None
            or manifest.get("version") != CACHE_VERSION or shape[0] != len(cached)
            or shape[1:] != (channels, size, size)):
        raise DataError(f"the image cache {where} is damaged or from another gantui; {redo}")
    progress = read_json_dict(where / "progress.json") or {}
    if progress.get("done") != len(cached):
        done = progress.get("done")
        done = done if type(done) is int else 0
        raise DataError(f"the image cache {where} is incomplete ({done:,} of {len(cached):,} "
                        f"files); finish it with `gantui prepare {root} --size {size}`, or "
                        f"train with --set data_cache=false")
    current = files if files is not None else listing(root)
    if current != cached:
        what = _difference(cached, current) or "the file order changed"
        raise DataError(f"the image cache {where} no longer matches {root} ({what} since it "
                        f"was prepared); {redo}")
    n = len(cached)
    try:
        images = np.memmap(where / "images.u8", dtype=np.uint8, mode="r", shape=shape)
        ok = np.fromfile(where / "ok.u8", dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"the image cache {where} cannot be read ({exc}); {redo}") from None
    if ok.shape != (n,):
        raise DataError(f"the image cache {where} is damaged (ok.u8 holds {len(ok)} entries, "
                        f"expected {n}); {redo}")
    labels, names = _read_labels(manifest, n)
    return Prepared(where, images, ok.astype(bool), labels, names)


def _labels_of(root: Path, files: Listing) -> dict[str, Any]:
    """``{"classes": [...], "labels": [...]}`` for the manifest of a class-labelled folder
    (labels as :func:`~gantui.data.datasets.class_folders` gives them, -1 for other files);
    ``{}`` when the folder is not one."""
    try:
        found = datasets.class_folders(root)
    except DataError:
        return {}
    label_of = {path.relative_to(root).as_posix(): int(label)
                for path, label in zip(found.files, found.labels, strict=True)}
    return {"classes": list(found.class_names),
            "labels": [label_of.get(name, -1) for name, _, _ in files]}


def _read_labels(manifest: dict[str, Any], n: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    names, labels = manifest.get("classes"), manifest.get("labels")
    if not (isinstance(names, list) and isinstance(labels, list) and len(labels) == n
            and len(names) >= 2 and all(isinstance(c, str) for c in names)
            and all(type(v) is int and -1 <= v < len(names) for v in labels)):
        return None, ()
    return np.asarray(labels, dtype=np.int64), tuple(names)


# ---- gantui prepare --------------------------------------------------------------------------

@dataclass(frozen=True)
class PrepareResult:
    """What one ``gantui prepare`` did."""

    path: Path
    files: int
    decoded: int
    """Files decoded by this call (a resumed prepare skips what was done before)."""
    unreadable: int
    """Files of the folder that could not be decoded (all calls)."""
    seconds: float
    resumed_at: int
    """Files already done when this call started."""
    class_names: tuple[str, ...] = ()
    """The classes of a class-labelled folder, whose labels the cache holds."""


def _tagged(items: list) -> list:
    """Collate for the prepare loader: keep ``(image or None, index)`` pairs as they are."""
    return [(image, index) for image, index, _, _ in items]


def _lock(where: Path):
    fh = open(where / ".lock", "a+b")  # noqa: SIM115 - held for the whole prepare
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise DataError(f"another gantui prepare is writing {where}") from None
    return fh


def prepare(root: Path, size: int, channels: int = 3, *, workers: int = 2,
            base: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Decode ``root`` into its cache (see the module docstring); resumes a killed prepare.

    Args:
        root: the image folder.
        size: side in pixels (centre crop, then resize, as training does).
        channels: 3 (RGB) or 1 (grey).
        workers: decoding processes.
        base: the cache root (default :func:`gantui.files.cache_root`).
        progress: called with ``(done, total)`` after every chunk.

    Raises:
        DataError: the folder is missing or empty, the disk is too small, or another
            prepare holds the cache.
    """
    started = time.perf_counter()
    root = Path(root).expanduser()
    files = listing(root)
    n = len(files)
    shape = (n, channels, size, size)
    where = cache_dir(root, size, channels, base)
    where.mkdir(parents=True, exist_ok=True)
    lock = _lock(where)
    try:
        manifest = {"version": CACHE_VERSION, "root": str(root.resolve()), "shape": list(shape),
                    "files": [list(f) for f in files], **_labels_of(root, files)}
        old = read_json_dict(where / "manifest.json")
        progress_record = read_json_dict(where / "progress.json") or {}
        done = progress_record.get("done")
        same = (old is not None and _read_listing(old) == files and _shape_of(old) == shape
                and old.get("version") == CACHE_VERSION and type(done) is int
                and 0 <= done <= n and (where / "images.u8").is_file()
                and (where / "images.u8").stat().st_size == np.prod(shape)
                and (where / "ok.u8").is_file() and (where / "ok.u8").stat().st_size == n)
        if not same:
            done = 0
            need = int(np.prod(shape)) + n
            free = shutil.disk_usage(where).free
            if free < need:
                raise DataError(f"preparing {root} at {size}px needs {need / 1e9:.2f} GB; "
                                f"{free / 1e9:.2f} GB free under {where}")
            for name in ("progress.json", "manifest.json", "images.u8", "ok.u8"):
                (where / name).unlink(missing_ok=True)
            np.memmap(where / "images.u8", dtype=np.uint8, mode="w+", shape=shape).flush()
            np.zeros(n, dtype=np.uint8).tofile(where / "ok.u8")
            atomic_write_bytes(where / "manifest.json", json.dumps(manifest).encode())
            _write_progress(where, 0)
        elif (old.get("classes"), old.get("labels")) != (manifest.get("classes"),
                                                         manifest.get("labels")):
            atomic_write_bytes(where / "manifest.json", json.dumps(manifest).encode())
        resumed_at = done
        images = np.memmap(where / "images.u8", dtype=np.uint8, mode="r+", shape=shape)
        ok = np.memmap(where / "ok.u8", dtype=np.uint8, mode="r+", shape=(n,))
        dataset = ImageFolder([root / name for name, _, _ in files], size, channels)
        if progress is not None:
            progress(done, n)
        if done < n:
            loader = torch.utils.data.DataLoader(
                dataset, sampler=[(i, 0, 0) for i in range(done, n)], batch_size=CHUNK,
                num_workers=workers, collate_fn=_tagged,
                worker_init_fn=worker_init_fn if workers else None)
            for chunk in loader:
                for image, index in chunk:
                    if image is not None:
                        images[index] = image.numpy()
                    ok[index] = image is not None
                done = chunk[-1][1] + 1
                images.flush()
                ok.flush()
                _write_progress(where, done)
                if progress is not None:
                    progress(done, n)
        unreadable = int(n - np.count_nonzero(ok))
        del images, ok
    finally:
        lock.close()
    return PrepareResult(where, n, n - resumed_at, unreadable, time.perf_counter() - started,
                         resumed_at, tuple(manifest.get("classes", ())))


def _write_progress(where: Path, done: int) -> None:
    atomic_write_bytes(where / "progress.json", json.dumps({"done": done}).encode())


# ---- a labelled folder in memory -------------------------------------------------------------

def labelled_folder(root: Path, size: int, channels: int, *, workers: int = 0,
                    use_cache: bool = True) -> datasets.Labelled:
    """The readable images of a class-labelled folder (``ROOT/<class>/...``) and their labels,
    decoded as training decodes them: from the prepared cache when it holds them, else from
    the files (unreadable ones left out).

    Raises:
        DataError: not a class-labelled folder, or no readable image in it.
    """
    root = Path(root).expanduser()
    found = datasets.class_folders(root)
    prepared = None
    if use_cache:
        try:
            prepared = open_prepared(root, size, channels)
        except DataError:  # stale or damaged: decode the files instead
            prepared = None
    if (prepared is not None and prepared.labels is not None
            and prepared.class_names == found.class_names):
        rows = np.flatnonzero((prepared.labels >= 0) & prepared.ok)
        images = torch.from_numpy(np.asarray(prepared.images[rows]))
        labels = torch.from_numpy(prepared.labels[rows])
        where = f"the prepared cache {prepared.path}"
    else:
        dataset = ImageFolder(found.files, size, channels)
        loader = torch.utils.data.DataLoader(
            dataset, sampler=[(i, 0, 0) for i in range(len(found.files))], batch_size=CHUNK,
            num_workers=workers, collate_fn=_tagged,
            worker_init_fn=worker_init_fn if workers else None)
        decoded = [(image, index) for chunk in loader for image, index in chunk
                   if image is not None]
        if not decoded:
            raise DataError(f"no readable images in the class folders of {root}")
        images = torch.stack([image for image, _ in decoded])
        labels = torch.from_numpy(found.labels[[index for _, index in decoded]])
        where = "its files"
    return datasets.Labelled(images, labels, found.class_names,
                             f"{len(images):,} images of {len(found.class_names)} classes under "
                             f"{root} ({size}px, from {where})")


# ---- training from the cache -------------------------------------------------------------

class CachedBatches:
    """Batches gathered from a prepared cache by a reader thread, ahead of the trainer.

    The same batches as :class:`~gantui.data.sources.FolderBatches` over the same folder: the
    same epoch permutation, unreadable files dropped from their batch the same way; for a
    conditional run, over the files of the class folders, with their labels.

    Raises:
        DataError: a conditional run on a cache without labels.
    """

    def __init__(self, prepared: Prepared, root: Path, cfg: Any, device: torch.device,
                 shard: Shard = WHOLE) -> None:
        self.prepared = prepared
        self.shard = shard
        self.root = root
        self.batch_size = cfg.batch_size
        self.seed = cfg.seed
        self.device = device
        self.rows: np.ndarray | None = None
        """A conditional run's cache rows (the files of the class folders), in label order."""
        classes = ""
        if cfg.conditional:
            if prepared.labels is None:
                raise DataError(f"the image cache {prepared.path} holds no labels; rerun "
                                f"`gantui prepare {root} --size {cfg.image_size}`")
            self.rows = np.flatnonzero(prepared.labels >= 0)
            names = prepared.class_names
            classes = f", {len(names)} classes ({', '.join(names[:6])}"
            classes += ", ...)" if len(names) > 6 else ")"
        self.n = len(prepared.ok) if self.rows is None else len(self.rows)
        self.steps_per_epoch = shard.size(self.n) // cfg.batch_size
        kind = "RGB" if cfg.channels == 3 else "grey"
        skipped = (f"; {prepared.unreadable:,} unreadable file(s) skipped"
                   if prepared.unreadable else "")
        self.note = (f"image folder: {self.n:,} images under {root}{classes}, {cfg.image_size}x"
                     f"{cfg.image_size} {kind}, from the prepared cache {prepared.path}"
                     f"{skipped}")
        self.data_fix = ("The cache is read ahead by one thread; keep it on a local disk with "
                         "room in the page cache")
        self.bad: set[int] = set()
        self._state = (0, 0)
        self._reader: _Reader | None = None

    @property
    def skipped(self) -> int:
        """Distinct unreadable files met so far (as the decoding path counts them)."""
        return len(self.bad)

    def gather(self, epoch: int, position: int, perm: np.ndarray
               ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
        """The uint8 images, their labels (conditional runs) and the skipped file indices of
        batch ``position`` of ``epoch``."""
        idx = perm[position * self.batch_size:(position + 1) * self.batch_size]
        rows = idx if self.rows is None else self.rows[idx]
        ok = self.prepared.ok[rows]
        good = rows[ok]
        x = torch.from_numpy(np.asarray(self.prepared.images[good])) if len(good) else None
        if x is not None and self.device.type == "cuda":
            x = x.pin_memory()
        y = (torch.from_numpy(self.prepared.labels[good])
             if self.rows is not None and x is not None else None)
        return x, y, idx[~ok].tolist()

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._reader is None:
            self._reader = _Reader(self, self._state)
        for _ in range(self.steps_per_epoch):
            x, y, bad, state = self._reader.get()
            self.bad.update(bad)
            self._state = state
            if x is not None:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True) if y is not None else None
                return x.float().div_(127.5).sub_(1.0), y
        raise DataError(f"no readable image in {self.steps_per_epoch} batches in a row (a whole "
                        f"epoch) in the cache of {self.root}")

    def epoch(self) -> int:
        return self._state[0]

    def close(self) -> None:
        """Stop the reader thread; ``next()`` starts a new one."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._state[0], "index": self._state[1], "bad": sorted(self.bad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self._state = (int(state["epoch"]), int(state["index"]))
        self.bad = {int(i) for i in state.get("bad", [])}


class _Reader:
    """A daemon thread that gathers the next batches from a given position onward."""

    def __init__(self, batches: CachedBatches, state: tuple[int, int]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches, state),
                                        name="gantui-cache-reader", daemon=True)
        self._thread.start()

    def _run(self, batches: CachedBatches, state: tuple[int, int]) -> None:
        epoch, position = state
        try:
            while not self._stop.is_set():
                perm = epoch_permutation(batches.n, batches.seed, epoch, batches.shard).numpy()
                for pos in range(position, batches.steps_per_epoch):
                    x, y, bad = batches.gather(epoch, pos, perm)
                    after = (epoch, pos + 1) if pos + 1 < batches.steps_per_epoch else (
                        epoch + 1, 0)
                    if not self._put((x, y, bad, after)):
                        return
                epoch, position = epoch + 1, 0
        except BaseException as exc:  # noqa: BLE001 - handed to the trainer's thread
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int],
                           tuple[int, int]]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise DataError(f"reading the image cache failed: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
