"""``itm search``: one query from the command line, or a session that answers query after query with
the matcher and the index loaded once."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import typer
from rich.table import Table

from cli.output import console
from cli.output import fail as _fail
from itm_core.errors import DataError, ParamsError, UserError

if TYPE_CHECKING:
    from itm_core.ops.search import Searcher

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def search(
    text: str | None = typer.Argument(
        None,
        help="Text to find images for. Leave it and --image out to search query after query (one per line, a "
        "text or the path of an image file) with the matcher and the index loaded once",
    ),
    image: Path | None = typer.Option(
        None, "--image", "-i", help="Search with an image file instead: similar images, or captions with --captions"
    ),
    k: int = typer.Option(10, "-k", help="How many results"),
    index: str | None = typer.Option(
        None, "--index", help="An `itm run index` run id or a saved index folder (default: the newest index)"
    ),
    matcher: str = typer.Option(
        "models:/itm-matcher@champion", "--matcher", "-m", help="Must be the matcher that built the index"
    ),
    captions: bool = typer.Option(False, "--captions", help="Search the caption index (built with captions: true)"),
    as_json: bool = typer.Option(
        False, "--json", help="Print each answer as one line of JSON (query, milliseconds, results) instead of a table"
    ),
) -> None:
    """The top k images for a text, or images (or captions) for an image, from an index built by `itm run index`."""
    from itm_core.ops.search import Searcher

    try:
        if text is not None and image is not None:
            raise ParamsError("give a text or --image, not both")
        if text is not None and not text.strip():
            raise ParamsError("the text to search with is empty")
        if image is not None and not image.is_file():
            raise DataError(f"image file not found: {image}")
        searcher = Searcher.open(index, matcher, "captions" if captions else "images")
        if text is None and image is None:
            _session(searcher, k, captions, as_json)
            return
        started = time.perf_counter()
        results = _answer(searcher, str(image) if image else str(text), k, image is not None)
    except UserError as exc:
        _fail(exc)
    _show(text if image is None else str(image), results, captions, as_json, time.perf_counter() - started)
    if not as_json:
        console.print(_describe(searcher), highlight=False)


def _describe(searcher: Searcher) -> str:
    index = searcher.index
    return f"index: {len(index)} items ({index.kind}), built with {index.meta.get('matcher_id')}"


def _answer(searcher: Searcher, query: str, k: int, is_image: bool) -> pd.DataFrame:
    from itm_core.data import open_image

    if is_image:
        (results,) = searcher.search_images([open_image(Path(query))], k)
    else:
        (results,) = searcher.search_texts([query], k)
    return results


def _queries(interactive: bool) -> Iterator[str]:
    """Lines from standard input until its end (Ctrl-D), with a prompt on a terminal."""
    while True:
        try:
            line = input("search> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        yield line.strip()


def _session(searcher: Searcher, k: int, captions: bool, as_json: bool) -> None:
    interactive = sys.stdin.isatty()
    if interactive and not as_json:
        console.print(
            f"{_describe(searcher)}\nType a text, or the path of an image file; Ctrl-D ends.", highlight=False
        )
    for query in _queries(interactive):
        if not query:
            continue
        started = time.perf_counter()
        is_image = Path(query).suffix.lower() in IMAGE_SUFFIXES
        try:
            if is_image and not Path(query).is_file():
                raise DataError(f"image file not found: {query}")
            results = _answer(searcher, query, k, is_image)
        except UserError as exc:  # one bad query does not end the session
            if as_json:
                print(json.dumps({"query": query, "error": str(exc)}), flush=True)
            else:
                console.print(f"[red]error:[/red] {exc}", highlight=False)
            continue
        _show(query, results, captions, as_json, time.perf_counter() - started)


def _show(query: str | None, results: pd.DataFrame, captions: bool, as_json: bool, seconds: float) -> None:
    if as_json:
        rows = [
            {
                "rank": int(r["rank"]),
                "score": float(r["score"]),
                **{c: str(r[c]) for c in results.columns if c not in ("rank", "score")},
            }
            for r in results.to_dict("records")
        ]
        print(json.dumps({"query": query, "ms": round(seconds * 1000, 2), "results": rows}), flush=True)
        return
    table = Table()
    for name in ("rank", "score", *(("caption", "image") if captions else ("image", "caption"))):
        table.add_column(name, overflow="fold", justify="right" if name in ("rank", "score") else "left")
    for row in results.itertuples():
        first, second = (row.caption, row.image) if captions else (row.image, row.caption)
        table.add_row(str(row.rank), f"{row.score:.4f}", first, second)
    console.print(table)
    console.print(f"{len(results)} results in {seconds * 1000:.0f} ms", highlight=False)
