"""The OCI runtime driver (runc/crun/runsc command line) and RuntimeClass handlers."""
