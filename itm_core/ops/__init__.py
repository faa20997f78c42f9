"""Operations: MLflow tracking and registry, model saving and pyfunc wrappers, plots, the local stack, Prefect forms, serving."""
