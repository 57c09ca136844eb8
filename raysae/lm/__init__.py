"""raysae.lm."""
