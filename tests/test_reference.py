"""Image references: normalised as distribution/reference (kubelet, containerd) does."""

from __future__ import annotations

import pytest

from crispy.errors import InvalidArgument
from crispy.images.reference import Reference, looks_like_image_id, parse

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "c" * 128


@pytest.mark.parametrize(
    ("ref", "domain", "path", "tag", "digest", "canonical"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("library/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None,
         "docker.io/library/busybox:1"),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("someone/app:v1.2", "docker.io", "someone/app", "v1.2", None,
         "docker.io/someone/app:v1.2"),
        ("gcr.io/a/b:c", "gcr.io", "a/b", "c", None, "gcr.io/a/b:c"),
        ("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
        ("localhost:5000/foo:bar", "localhost:5000", "foo", "bar", None,
         "localhost:5000/foo:bar"),
        (f"127.0.0.1:5000/a/b@{D1}", "127.0.0.1:5000", "a/b", None, D1,
         f"127.0.0.1:5000/a/b@{D1}"),
        (f"name:tag@{D2}", "docker.io", "library/name", "tag", D2,
         f"docker.io/library/name:tag@{D2}"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io", "pause", "3.10", None,
         "registry.k8s.io/pause:3.10"),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, "[::1]:5000/x:latest"),
        ("[2001:db8::1]/x/y:z", "[2001:db8::1]", "x/y", "z", None, "[2001:db8::1]/x/y:z"),
        ("quay.io/a/b/c/d", "quay.io", "a/b/c/d", "latest", None, "quay.io/a/b/c/d:latest"),
        # Separators: ".", "_", "__", any run of "-".
        ("a.b_c__d---e", "docker.io", "library/a.b_c__d---e", "latest", None,
         "docker.io/library/a.b_c__d---e:latest"),
        # Tags may hold uppercase; only the repository must be lowercase.
        ("busybox:Latest_1.0-x", "docker.io", "library/busybox", "Latest_1.0-x", None,
         "docker.io/library/busybox:Latest_1.0-x"),
        # A single element is always a Hub image: "localhost:5000" is image "localhost".
        ("localhost:5000", "docker.io", "library/localhost", "5000", None,
         "docker.io/library/localhost:5000"),
        # No "." or ":" and lowercase: a Hub namespace, not a host.
        ("myregistry/app", "docker.io", "myregistry/app", "latest", None,
         "docker.io/myregistry/app:latest"),
        # Uppercase can't be a namespace, so distribution takes it for a host name.
        ("UPPER/case", "UPPER", "case", "latest", None, "UPPER/case:latest"),
        (f"busybox@{SHA512}", "docker.io", "library/busybox", None, SHA512,
         f"docker.io/library/busybox@{SHA512}"),
    ],
)  # fmt: skip
def test_normalisation(
    ref: str, domain: str, path: str, tag: str | None, digest: str | None, canonical: str
) -> None:
    r = parse(ref)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)
    assert str(r) == canonical
    assert r.name == f"{domain}/{path}"
    # The canonical form is a fixed point.
    assert parse(str(r)) == r


def test_repo_tag_digest_and_manifest_ref() -> None:
    r = parse("busybox:1.36")
    assert r.repo_tag == "docker.io/library/busybox:1.36"
    assert r.with_digest(D1) == f"docker.io/library/busybox@{D1}"
    assert r.manifest_ref == "1.36"

    by_digest = parse(f"busybox@{D1}")
    assert by_digest.repo_tag is None
    assert by_digest.manifest_ref == D1

    both = parse(f"busybox:1.36@{D1}")
    assert both.repo_tag == "docker.io/library/busybox:1.36"
    assert both.manifest_ref == D1  # the digest wins when pulling

    with pytest.raises(InvalidArgument, match="sha256:abc"):
        r.with_digest("sha256:abc")


def test_reference_is_a_frozen_value() -> None:
    a, b = parse("busybox"), parse("docker.io/library/busybox:latest")
    assert a == b and hash(a) == hash(b)
    assert a == Reference("docker.io", "library/busybox", "latest", None)
    with pytest.raises(AttributeError):
        a.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "upper/Case",
        "UPPER/Case",
        "Busybox",
        "localhost:5000/Foo",
        "a//b",
        "a/",
        "/a",
        "foo:",
        "foo@",
        "foo@sha256:abc",
        "foo@md5:" + "0" * 32,
        "foo@sha256:" + "a" * 63,
        "foo@sha256:" + "A" * 64,
        "foo@sha512:" + "a" * 64,
        "http://x/y",
        "https://registry.k8s.io/pause:3.10",
        "-foo",
        "foo/-bar",
        "foo_/bar",
        "foo/bar.",
        "foo..bar",
        "foo___bar",
        "a b",
        " busybox",
        "busybox ",
        "busybox\n",
        "busybox\t:1",
        "café",
        "foo:bar:baz",
        "foo:" + "t" * 129,
        "foo:-tag",
        "foo:.tag",
        "foo@sha256:" + "a" * 64 + ":1",
        "a" * 64,  # a bare image ID is not a name
        "example.com/" + "a" * 256,
        "example.com/" + "/".join(["abcdefghij"] * 24),  # 263 characters of path
        "-bad.example.com/x",
        "bad_host.com:5000/x",
        "host.com:port/x",
        "[zz::1]:5000/x",
        "a" * 5000,
    ],
)
def test_invalid_references(ref: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse(ref)
    shown = ref if len(ref) <= 4096 else ref[:64]
    assert repr(shown)[1:-1] in str(exc.value)


def test_name_length_limit_is_on_the_path() -> None:
    path = "/".join(["a" * 9] * 25) + "/abcde"  # 255 characters
    assert len(path) == 255
    assert parse(f"registry.example.com/{path}").path == path
    with pytest.raises(InvalidArgument, match="255"):
        parse(f"registry.example.com/{path}x")


def test_error_messages_say_why() -> None:
    with pytest.raises(InvalidArgument, match="lowercase"):
        parse("upper/Case")
    with pytest.raises(InvalidArgument, match="unsupported digest algorithm 'md5'"):
        parse("foo@md5:" + "0" * 32)
    with pytest.raises(InvalidArgument, match="scheme"):
        parse("http://x/y")
    with pytest.raises(InvalidArgument, match="hexadecimal"):
        parse("f" * 64)


def test_hostile_input_is_rejected_quickly() -> None:
    import time

    start = time.monotonic()
    for s in ("a" * 4000 + "!", "a-" * 2000 + "!", "x/" + "a_" * 2000 + "!", "a." * 2000 + "/"):
        with pytest.raises(InvalidArgument):
            parse(s)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("a" * 64, True),
        ("sha256:" + "a" * 64, True),
        (SHA512, True),
        ("A" * 64, False),
        ("a" * 63, False),
        ("sha256:" + "a" * 63, False),
        ("md5:" + "a" * 32, False),
        ("busybox", False),
        ("docker.io/library/busybox@sha256:" + "a" * 64, False),
        ("", False),
    ],
)
def test_looks_like_image_id(s: str, expected: bool) -> None:
    assert looks_like_image_id(s) is expected
