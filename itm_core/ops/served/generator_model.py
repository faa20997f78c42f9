"""Models-from-code entry of a logged captioner or text-to-image model (see ``itm_core.ops.served``)."""

import mlflow

from itm_core.ops.tracking import GeneratorModel

mlflow.models.set_model(GeneratorModel())
