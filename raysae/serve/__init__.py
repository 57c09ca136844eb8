"""raysae.serve."""
