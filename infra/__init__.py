"""litflow infra."""
