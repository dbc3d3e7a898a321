"""litflow dedup."""
