"""A project-local Prefect server and serve process: start, wait, run, stop."""
