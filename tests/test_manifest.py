"""Manifest parsing, platform selection and chain IDs (no network)."""

from __future__ import annotations

import json

import pytest

from crispy.images import manifest as mf

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64


def _index(*platforms: dict[str, str]) -> mf.Index:
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [
            {"mediaType": mf.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1, "platform": p}
            for i, p in enumerate(platforms)
        ],
    }
    parsed = mf.parse(json.dumps(doc).encode(), "", D)
    assert isinstance(parsed, mf.Index)
    return parsed


def test_schema1_is_a_clear_error() -> None:
    doc = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}
    with pytest.raises(mf.ManifestError, match="schema 1"):
        mf.parse(
            json.dumps(doc).encode(), "application/vnd.docker.distribution.manifest.v1+prettyjws", D
        )


def test_media_type_from_body_wins_and_is_guessed_when_missing() -> None:
    doc = {
        "schemaVersion": 2,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": D, "size": 3},
        "layers": [],
    }
    parsed = mf.parse(json.dumps(doc).encode(), "text/plain", D)
    assert isinstance(parsed, mf.Manifest) and parsed.media_type == mf.OCI_MANIFEST


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[]",
        json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST, "config": {}}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mf.OCI_MANIFEST,
                "config": {"digest": "md5:00", "size": 1},
                "layers": [],
            }
        ).encode(),
        json.dumps({"mediaType": "application/x-unknown"}).encode(),
    ],
)
def test_malformed_manifests_are_refused(bad: bytes) -> None:
    with pytest.raises(mf.ManifestError):
        mf.parse(bad, "", D)


def test_select_platform_prefers_exact_variant() -> None:
    idx = _index(
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "amd64"},
        {"os": "windows", "architecture": "amd64"},
    )
    assert mf.select_platform(idx, mf.Platform("linux", "amd64")).digest.endswith("2")
    assert mf.select_platform(idx, mf.Platform("linux", "arm", "v7")).digest.endswith("1")
    with pytest.raises(mf.ManifestError, match="no image for platform linux/s390x"):
        mf.select_platform(idx, mf.Platform("linux", "s390x"))
    arm64 = _index({"os": "linux", "architecture": "arm64"})
    assert mf.select_platform(arm64, mf.Platform("linux", "arm64", "v8"))


def test_chain_ids_follow_the_oci_definition() -> None:
    ids = mf.chain_ids([D, E])
    assert ids[0] == D
    assert ids[1] == mf.sha256_digest(f"{D} {E}".encode())
    assert mf.chain_ids([]) == []


def test_config_must_match_the_layers() -> None:
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [D]}}).encode()
    assert mf.parse_config(cfg, E, 1).diff_ids == [D]
    with pytest.raises(mf.ManifestError, match="1 diff_ids for 2 layers"):
        mf.parse_config(cfg, E, 2)


def test_unknown_layer_media_type() -> None:
    desc = mf.Descriptor("application/x-tar+lz4", D, 1)
    with pytest.raises(mf.ManifestError, match="unsupported layer media type"):
        _ = desc.compression
