"""What kubelet's stats and metrics come from: cgroup figures, writable-layer usage, netns
counters, a cgroup's processes in /proc, the layer's filesystem.

The readers here own one outside thing each and know nothing of CRI messages;
`service.py` puts their figures together per container and pod, and `cadvisor.py` names
them as cAdvisor's metric families.
"""
