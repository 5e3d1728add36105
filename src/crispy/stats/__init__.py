"""What kubelet's stats come from: cgroup figures, writable-layer usage, netns counters.

The readers here own one outside thing each and know nothing of CRI messages;
`service.py` puts their figures together per container and pod.
"""
