"""CrossCoder (being written)."""
