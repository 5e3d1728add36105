"""Thin wrappers around what the host offers (cgroups, kernel features)."""
