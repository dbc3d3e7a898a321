"""Spark: a standalone cluster (master + workers) and client sessions against it."""
