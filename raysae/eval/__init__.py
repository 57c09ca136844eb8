"""raysae.eval."""
