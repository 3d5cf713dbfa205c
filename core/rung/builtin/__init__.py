"""The core's own plugins: registered through the same entry-point path as any other."""
