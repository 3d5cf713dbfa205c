"""The `rung` command line: a thin layer over `rung.api`; each command in its own module."""
