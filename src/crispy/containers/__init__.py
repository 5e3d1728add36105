"""Containers: their records and lifecycle, image mounts and VOLUMEs, exec/attach ends."""
