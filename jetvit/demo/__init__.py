"""The built-in demo: a teacher the project pretrains itself, and `make demo`."""
