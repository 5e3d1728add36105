"""Containers: the CRI → OCI spec (spec.py, users.py, seccomp.py), records and lifecycle."""
