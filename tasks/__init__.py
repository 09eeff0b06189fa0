"""One module per stage: the stage logic as plain functions, and a thin Prefect task around it."""
