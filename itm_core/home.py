"""The workbench's home folder: ``$ITM_HOME``, else ``./.itm``. The MLflow store and registry, Prefect's
database, the embedding cache, checkpoints, promotion locks, unpacked datasets and the local stack's
state all live under it, so one home is one workbench."""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "ITM_HOME"
DEFAULT_HOME = ".itm"


def itm_home() -> Path:
    return Path(os.environ.get(HOME_VARIABLE, DEFAULT_HOME)).resolve()
