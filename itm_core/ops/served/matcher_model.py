"""Models-from-code entry of a logged matcher (see ``itm_core.ops.served``)."""

import mlflow

from itm_core.ops.tracking import MatcherModel

mlflow.models.set_model(MatcherModel())
