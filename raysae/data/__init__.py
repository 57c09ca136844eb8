"""raysae.data."""
