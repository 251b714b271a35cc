"""vae package (see its issue)."""
