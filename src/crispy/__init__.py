"""crispy: a Kubernetes container runtime (CRI) written in Python."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crispy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

RUNTIME_NAME = "crispy"
# The CRI API version string kubelet's `crictl version` shows as "Version".
CRI_VERSION = "0.1.0"
CRI_API_VERSION = "v1"
