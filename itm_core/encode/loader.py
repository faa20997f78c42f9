"""Reading image files for encoding: each file is read once, hashed and decoded in the same step, in
``torch.utils.data.DataLoader`` worker processes, so decoding overlaps the model.

A file that is missing, corrupt, truncated, too large (a decompression bomb) or not an image comes
back as a failure with the reason, never as an exception inside a worker.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch.utils.data

from itm_core.data.images import DEFAULT_MAX_PIXELS, open_image
from itm_core.data.pairs import DataError


@dataclass
class LoadedImage:
    """One file's outcome: its content key and decoded (and maybe preprocessed) value, or the reason it failed."""

    index: int
    path: str
    key: str | None = None
    size: int = 0
    mtime_ns: int = 0
    value: Any = None
    error: str | None = None


def read_image(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, preprocess: Callable[[Any], Any] | None = None, index: int = 0
) -> LoadedImage:
    """Read ``path`` once: hash its bytes, decode them with the safety checks of :func:`open_image`,
    and apply ``preprocess`` (an encoder's per-image step) to the decoded image."""
    out = LoadedImage(index, path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except FileNotFoundError:
        out.error = f"{path}: image file not found"
        return out
    except OSError as exc:
        out.error = f"{path}: cannot be read ({exc.strerror})"
        return out
    out.key, out.size, out.mtime_ns = hashlib.sha256(raw).hexdigest(), st.st_size, st.st_mtime_ns
    try:
        image = open_image(io.BytesIO(raw), max_pixels, label=path)
        out.value = preprocess(image) if preprocess is not None else image
    except DataError as exc:
        out.error = str(exc)
    return out


class ImageFiles(torch.utils.data.Dataset[LoadedImage]):
    """A map-style dataset over image paths for ``DataLoader``: item ``i`` is :func:`read_image` of path ``i``."""

    def __init__(self, paths: Sequence[str], max_pixels: int, preprocess: Callable[[Any], Any] | None) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> LoadedImage:
        return read_image(self.paths[i], self.max_pixels, self.preprocess, i)


def default_workers() -> int:
    """Loader processes beside the model: one per two cores, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _as_list(batch: list[LoadedImage]) -> list[LoadedImage]:
    return batch


def _die_with(parent: int, worker_id: int) -> None:
    """Loader workers are killed with the run that started them, even by kill -9 (on Linux): a worker
    whose read-ahead queue is full would otherwise wait on it, holding its memory, forever. A
    SIGTERM sent to the whole process group (``timeout``, a container stop) is left to the run,
    which stops its workers itself: a worker it killed would surface as an error, not as the stop."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the run died before the line above
        os._exit(1)


def iter_images(
    paths: Sequence[str],
    batch_size: int,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    preprocess: Callable[[Any], Any] | None = None,
) -> Iterator[list[LoadedImage]]:
    """Batches of :class:`LoadedImage`, in the order of ``paths``; ``workers`` processes read ahead
    (0 reads in this process)."""
    files = ImageFiles(paths, max_pixels, preprocess)
    if workers <= 0 or len(paths) <= batch_size:
        for start in range(0, len(files), batch_size):
            yield [files[i] for i in range(start, min(start + batch_size, len(files)))]
        return
    loader: torch.utils.data.DataLoader[LoadedImage] = torch.utils.data.DataLoader(
        files,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=4,
        multiprocessing_context="fork" if "fork" in _start_methods() else None,
        worker_init_fn=functools.partial(_die_with, os.getpid()),
    )
    yield from loader


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()
