"""Domain errors. Managers raise these; `cri/interceptor.py` maps each to a gRPC status."""


class CrispyError(Exception):
    """Base of every error crispy reports to a client."""


class NotFound(CrispyError):
    """The named object (pod, container, image) does not exist."""


class InvalidArgument(CrispyError):
    """The request is malformed: a bad reference, config or option."""


class AlreadyExists(CrispyError):
    """A name or ID is already in use."""


class FailedPrecondition(CrispyError):
    """The object is in a state that does not allow the call."""


class Unavailable(CrispyError):
    """A dependency (registry, runtime binary, shim) could not be reached."""


class ResourceExhausted(CrispyError):
    """A limit was hit (disk, a size cap)."""


class DeadlineExceeded(CrispyError):
    """An operation took longer than it was allowed to."""


class Unauthenticated(CrispyError):
    """A registry refused the credentials (or wants some)."""


class PermissionDenied(CrispyError):
    """Authenticated, but not allowed."""
