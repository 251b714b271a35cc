"""bnn package (see its issue)."""
