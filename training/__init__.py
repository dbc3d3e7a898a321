"""litflow training."""
