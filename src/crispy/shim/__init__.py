"""crispy-shim: the per-pod supervisor (standard library only)."""
