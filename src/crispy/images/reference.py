"""Image references, parsed and normalised as kubelet and containerd do.

This follows github.com/distribution/reference (`ParseNormalizedNamed`, then
`TagNameOnly`) so that an image a kubelet asks for is stored and listed under the
same name containerd would use: `busybox` -> `docker.io/library/busybox:latest`.

Grammar (distribution/reference):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path
    domain     := host [":" port]          host: DNS-ish name, IPv4, or [IPv6]
    path       := component ("/" component)*
    component  := [a-z0-9]+ (separator [a-z0-9]+)*   separator: "." "_" "__" "-"+
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crispy.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
# distribution/reference checks the repository path (the part after the domain).
NAME_MAX = 255
# Not in the grammar: a cap so a hostile string can't make the regexes work hard.
REFERENCE_MAX = 4096

# Digest algorithms go-digest knows, with their hex length. Anything else is
# rejected, as containerd rejects it (ErrDigestUnsupported).
DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
# Same language as distribution's `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`,
# written so the engine can't backtrack through both alternatives.
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# re.ASCII: Go's \w is ASCII-only; Python's would admit any Unicode letter.
DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
PATH_RE = re.compile(_PATH, re.ASCII)
TAG_RE = re.compile(_TAG, re.ASCII)
DIGEST_RE = re.compile(_DIGEST, re.ASCII)
_REMAINDER_RE = re.compile(
    rf"(?P<path>{_PATH})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_IMAGE_ID_RE = re.compile(r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; `str()` gives the canonical form."""

    domain: str  # "docker.io", "registry.k8s.io", "localhost:5000", "[::1]:5000"
    path: str  # "library/busybox"
    tag: str | None
    digest: str | None  # "sha256:<64 hex>"; wins over the tag when pulling

    @property
    def name(self) -> str:
        """The repository name: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.name
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s

    @property
    def repo_tag(self) -> str | None:
        """`name:tag` (what CRI lists in repo_tags), or None for a digest-only reference."""
        return f"{self.name}:{self.tag}" if self.tag is not None else None

    @property
    def manifest_ref(self) -> str:
        """What to ask `/v2/<path>/manifests/<x>` for: the digest if there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    def with_digest(self, digest: str) -> str:
        """`name@digest`: the repo digest CRI lists for an image pulled by this name."""
        problem = digest_problem(digest)
        if problem:
            raise InvalidArgument(f"invalid digest {digest!r}: {problem}")
        return f"{self.name}@{digest}"


def _invalid(ref: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {ref!r}: {reason}")


def digest_problem(digest: str) -> str | None:
    """Why `digest` is not a digest containerd accepts, or None if it is one."""
    if not DIGEST_RE.fullmatch(digest):
        return "invalid digest format"
    algorithm, _, hexpart = digest.partition(":")
    want = DIGEST_HEX_LEN.get(algorithm)
    if want is None:
        return f"unsupported digest algorithm {algorithm!r}"
    if len(hexpart) != want:
        return f"{algorithm} digest must have {want} hex digits, not {len(hexpart)}"
    if hexpart != hexpart.lower():
        return "digest hex must be lowercase"
    return None


def split_domain(ref: str) -> tuple[str, str]:
    """Split off the registry domain as distribution's `splitDockerDomain` does."""
    first, sep, rest = ref.partition("/")
    if not sep:
        # A single element ("busybox", "busybox:1") is always an official Hub image:
        # "localhost:5000" alone is the image "localhost" with tag "5000".
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + ref
    if first == "localhost":
        domain, remainder = first, rest
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif "." in first or ":" in first or first.lower() != first:
        # A "." or ":" means a host name, IP or port; uppercase can't be a repository
        # namespace, so distribution takes that for a host name too.
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, ref
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(ref: str) -> Reference:
    """Parse and normalise `ref`; a reference with neither tag nor digest gets `:latest`.

    Raises InvalidArgument with the reference in the message.
    """
    if not ref:
        raise _invalid(ref, "repository name must have at least one component")
    if len(ref) > REFERENCE_MAX:
        raise _invalid(ref[:64] + "...", f"longer than {REFERENCE_MAX} characters")
    if "://" in ref:
        raise _invalid(ref, "an image reference has no URL scheme (drop the scheme://)")
    if _IDENTIFIER_RE.fullmatch(ref):
        raise _invalid(ref, "cannot specify 64-byte hexadecimal strings (an image ID?)")
    domain, remainder = split_domain(ref)
    repo_part = remainder.partition(":")[0]
    if repo_part.lower() != repo_part:
        raise _invalid(ref, "repository name must be lowercase")
    if not DOMAIN_RE.fullmatch(domain):
        raise _invalid(ref, f"invalid registry domain {domain!r}")
    m = _REMAINDER_RE.fullmatch(remainder)
    if m is None:
        raise _invalid(ref, "invalid reference format")
    path, tag, digest = m.group("path"), m.group("tag"), m.group("digest")
    if len(path) > NAME_MAX:
        raise _invalid(ref, f"repository name must not be more than {NAME_MAX} characters")
    if digest is not None and (problem := digest_problem(digest)):
        raise _invalid(ref, problem)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def looks_like_image_id(s: str) -> bool:
    """True for a bare 64-hex ID or a `sha256:`/`sha512:` digest: an image ID, not a name.

    kubelet may pass an image ID where a reference is expected (ImageStatus,
    RemoveImage); `parse` would take "sha256:<hex>" for image "sha256" with a hex tag.
    """
    return bool(_IDENTIFIER_RE.fullmatch(s) or _IMAGE_ID_RE.fullmatch(s))


__all__ = ["Reference", "digest_problem", "looks_like_image_id", "parse", "split_domain"]
