"""litflow curation."""
