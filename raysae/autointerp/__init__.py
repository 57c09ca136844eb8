"""raysae.autointerp."""
