"""litflow flows."""
