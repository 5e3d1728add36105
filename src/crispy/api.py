"""The runtime.v1 protobuf messages and service descriptors (wire-identical to k8s.io/cri-api)."""

from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]

__all__ = ["IMAGE_SERVICE", "RUNTIME_SERVICE", "pb", "pb_grpc"]
