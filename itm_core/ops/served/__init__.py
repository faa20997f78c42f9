"""The code MLflow logs with each model (models-from-code): a file per model kind
(``matcher_model.py``, ``generator_model.py``, ``search_model.py``) that builds the project's pyfunc
class. Loading a logged model runs that file and the installed ``itm_core``; nothing is unpickled."""
