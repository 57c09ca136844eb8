"""raysae.store."""
