"""Test support code: a local OCI registry and a deterministic image builder."""
