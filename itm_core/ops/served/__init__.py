"""The code MLflow logs with each model (models-from-code): a file per model kind that builds the
project's pyfunc class. Loading a logged model runs this file and the installed ``itm_core``;
nothing is unpickled."""

from pathlib import Path

FOLDER = Path(__file__).parent


def code_path(kind: str) -> str:
    """The models-from-code file for ``kind`` (``matcher``, ``generator`` or ``search``)."""
    return str(FOLDER / f"{kind}_model.py")
