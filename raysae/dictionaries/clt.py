"""Cross-layer transcoder (being written)."""
