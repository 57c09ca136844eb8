"""raysae.train."""
