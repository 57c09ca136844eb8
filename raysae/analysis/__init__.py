"""raysae.analysis."""
