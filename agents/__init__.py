"""agents package (see its issue)."""
