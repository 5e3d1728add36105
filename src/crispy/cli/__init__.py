"""The `crispy` command line: a CRI client for people at a terminal."""
