"""Layer family module (being written)."""
