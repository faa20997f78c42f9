"""Operations: MLflow tracking and registry, pyfunc wrappers, the scorers a flow names, plots, the local
stack, Prefect forms, search and serving."""
