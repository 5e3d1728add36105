"""The thin gRPC face: CRI message <-> domain call, domain error <-> gRPC status."""
