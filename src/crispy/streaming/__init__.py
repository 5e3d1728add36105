"""The CRI streaming server: exec, attach and port-forward sessions kubelet hands to clients."""
