"""The OCI layer: RuntimeClass handlers, the CRI → OCI spec builder (spec.py, users.py,
seccomp.py), and the client of the per-pod shim that runs the runtime."""
