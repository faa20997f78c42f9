"""Models-from-code entry of a logged search model (see ``itm_core.ops.served``)."""

import mlflow

from itm_core.ops.search import SearchModel

mlflow.models.set_model(SearchModel())
