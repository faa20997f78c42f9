"""The embedding cache: rows committed in bounded shards as they are produced, found through an index.

Layout, one folder per encoder key (the encoder's name, options and fitted state)::

    <cache>/<encoder key>/index.sqlite          key -> (shard, row)
    <cache>/<encoder key>/<shard>.<field>.npy   one array per field, memory-mapped on read
    <cache>/files.sqlite                        (path, size, mtime) -> content key of an image file

A shard's files are written under temporary names, renamed, and only then listed in the index in one
SQLite transaction, so a killed run leaves either a whole shard or none: a re-run redoes at most the
rows that were not yet committed. Looking up N keys is one indexed join (O(N log M)), and only the
shards that hold them are opened, as memory maps. Concurrent writers each write their own shard files
(random names) and SQLite serialises the index updates; a row written twice keeps its first copy.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from itm_core.home import itm_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, shard TEXT NOT NULL, row INTEGER NOT NULL) WITHOUT ROWID;
"""
FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, key TEXT NOT NULL
) WITHOUT ROWID;
"""


def default_cache_dir() -> Path:
    """``$ITM_CACHE_DIR``, else ``$ITM_HOME/cache`` (``ITM_HOME`` defaults to ``./.itm``)."""
    if os.environ.get("ITM_CACHE_DIR"):
        return Path(os.environ["ITM_CACHE_DIR"])
    return itm_home() / "cache"


def _connect(path: Path, schema: str, timeout: float = 60.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    # Switching to WAL takes an exclusive lock, and SQLite may answer "database is locked" at once,
    # without waiting, while another process is creating the same index: retry until the timeout.
    deadline = time.monotonic() + timeout
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                con.close()
                raise
            time.sleep(0.05)
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript(schema)
    return con


class EmbeddingCache:
    """Embeddings per encoder key, looked up by content key.

    ``float16`` stores floating-point fields at half precision (half the disk and page cache; rows
    come back as float32 with about 3 significant digits).
    """

    def __init__(self, folder: str | Path | None = None, float16: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.float16 = float16

    def _index(self, enc_key: str) -> sqlite3.Connection:
        return _connect(self.folder / enc_key / "index.sqlite", SCHEMA)

    def lookup(self, enc_key: str, keys: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
        """For each shard holding some of ``keys``: the (position in ``keys``, row in the shard) pairs."""
        if not keys or not (self.folder / enc_key / "index.sqlite").is_file():
            return {}
        out: dict[str, list[tuple[int, int]]] = {}
        with closing(self._index(enc_key)) as con:
            con.execute("CREATE TEMP TABLE want (pos INTEGER, key TEXT)")
            con.executemany("INSERT INTO want VALUES (?, ?)", enumerate(keys))
            for pos, shard, row in con.execute(
                "SELECT want.pos, rows.shard, rows.row FROM want JOIN rows ON rows.key = want.key"
            ):
                out.setdefault(shard, []).append((pos, row))
        return out

    def read_into(
        self,
        enc_key: str,
        found: dict[str, list[tuple[int, int]]],
        out: dict[str, np.ndarray],
        n: int,
        dtypes: dict[str, np.dtype],
    ) -> dict[str, np.ndarray]:
        """Copy the rows ``found`` names into ``out``; a field missing from ``out`` is allocated for
        ``n`` rows of ``dtypes[field]`` from the first shard that has it. Returns ``out``."""
        folder = self.folder / enc_key
        for shard, pairs in found.items():
            pos = np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs))
            rows = np.fromiter((r for _, r in pairs), dtype=np.int64, count=len(pairs))
            order = np.argsort(rows)  # read each shard front to back
            pos, rows = pos[order], rows[order]
            for field, dtype in dtypes.items():
                data = np.load(folder / f"{shard}.{field}.npy", mmap_mode="r")
                if field not in out:
                    out[field] = np.empty((n, *data.shape[1:]), dtype=dtype)
                out[field][pos] = data[rows]
        return out

    def put(self, enc_key: str, keys: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        """Commit one shard: ``arrays[field][i]`` is the row of ``keys[i]``."""
        if not keys:
            return
        folder = self.folder / enc_key
        folder.mkdir(parents=True, exist_ok=True)
        shard = uuid.uuid4().hex[:16]
        for field, array in arrays.items():
            array = np.ascontiguousarray(array)
            if self.float16 and array.dtype == np.float32:
                array = array.astype(np.float16)
            tmp = folder / f".{shard}.{field}.tmp.npy"
            np.save(tmp, array)
            tmp.replace(folder / f"{shard}.{field}.npy")
        with closing(self._index(enc_key)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?, ?)", ((k, shard, i) for i, k in enumerate(keys)))
            con.execute("COMMIT")

    def count(self, enc_key: str) -> int:
        """How many rows the cache holds for ``enc_key``."""
        if not (self.folder / enc_key / "index.sqlite").is_file():
            return 0
        with closing(self._index(enc_key)) as con:
            return int(con.execute("SELECT COUNT(*) FROM rows").fetchone()[0])


class FileKeys:
    """Content keys of image files remembered by absolute path, size and modification time, so a
    re-run does not read every file again only to hash it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "files.sqlite"

    def known(self, paths: Sequence[str]) -> list[str | None]:
        """The remembered key of each path whose size and mtime are unchanged, else ``None``."""
        if not self.path.is_file():
            return [None] * len(paths)
        paths = [os.path.abspath(p) for p in paths]
        stats: list[tuple[int, int] | None] = []
        for p in paths:
            try:
                found = os.stat(p)
                stats.append((found.st_size, found.st_mtime_ns))
            except OSError:
                stats.append(None)
        seen: dict[str, tuple[int, int, str]] = {}
        with closing(_connect(self.path, FILES_SCHEMA)) as con:
            con.execute("CREATE TEMP TABLE want (path TEXT)")
            con.executemany("INSERT INTO want VALUES (?)", ((p,) for p in paths))
            for path, size, mtime, key in con.execute(
                "SELECT files.path, size, mtime_ns, key FROM want JOIN files ON files.path = want.path"
            ):
                seen[path] = (size, mtime, key)
        out: list[str | None] = []
        for p, st in zip(paths, stats):
            hit = seen.get(p)
            out.append(hit[2] if hit is not None and st is not None and hit[:2] == st else None)
        return out

    def remember(self, entries: Iterable[tuple[str, int, int, str]]) -> None:
        """Record (path, size, mtime_ns, key) rows."""
        entries = [(os.path.abspath(p), size, mtime, key) for p, size, mtime, key in entries]
        if not entries:
            return
        with closing(_connect(self.path, FILES_SCHEMA)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", entries)
            con.execute("COMMIT")
