"""Config loading: defaults, overrides, and an error naming the key for every bad value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crispy import config
from crispy.config import ConfigError, from_table, load
from crispy.images.unpack import DEFAULT_MAX_LAYER_SIZE


def test_defaults_cover_every_key() -> None:
    cfg = from_table({})
    assert cfg.root == "/var/lib/crispy"
    assert cfg.state == "/run/crispy"
    assert cfg.socket_path == "/run/crispy/crispy.sock"
    assert cfg.db_path == "/var/lib/crispy/crispy.db"
    assert cfg.log_level == "info"
    assert cfg.default_runtime == "runc"
    assert cfg.cni.conf_dir == "/etc/cni/net.d"
    assert cfg.cni.bin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]
    assert cfg.registry.hosts_dir == "/etc/crispy/certs.d"
    assert (cfg.streaming.address, cfg.streaming.port) == ("127.0.0.1", 0)
    # runc is installed by setup; its state lives under the state dir by default.
    assert cfg.runtimes["runc"].root == "/run/crispy/runc"


def test_flags_override_file_and_move_runtime_roots() -> None:
    cfg = from_table(
        {"root": "/srv/a", "log_level": "warning"},
        {"state": "/tmp/s", "log_level": "debug", "listen": None},
    )
    assert cfg.root == "/srv/a"
    assert cfg.state == "/tmp/s"
    assert cfg.log_level == "debug"
    assert cfg.runtimes["runc"].root == "/tmp/s/runc"


def test_user_runtime_added_and_builtin_overridden() -> None:
    cfg = from_table(
        {
            "runtimes": {
                "runc": {"path": "/usr/sbin/runc", "root": "/run/other/runc"},
                "mine": {"path": "runc"},
            },
            "default_runtime": "mine",
        }
    )
    assert cfg.runtimes["runc"].root == "/run/other/runc"
    assert cfg.runtimes["mine"].root == "/run/crispy/mine"
    assert cfg.default_runtime == "mine"


def test_in_pod_netns_is_a_key_with_the_runsc_default() -> None:
    """Whether a runtime runs in the pod's netns is configured, never guessed from its
    binary's name: a handler of one's own that runs runsc says so."""
    cfg = from_table({"runtimes": {"gvisor": {"path": "runc", "in_pod_netns": True}}})
    assert cfg.runtimes["gvisor"].in_pod_netns is True
    assert cfg.runtimes["runc"].in_pod_netns is False
    assert (
        from_table({"runtimes": {"plain": {"path": "runc"}}}).runtimes["plain"].in_pod_netns
        is False
    )
    if shutil.which("runsc"):
        assert cfg.runtimes["runsc"].in_pod_netns is True
        off = from_table({"runtimes": {"runsc": {"path": "runsc", "in_pod_netns": False}}})
        assert off.runtimes["runsc"].in_pod_netns is False
    with pytest.raises(ConfigError, match=r"runtimes\.gvisor\.in_pod_netns"):
        from_table({"runtimes": {"gvisor": {"path": "runc", "in_pod_netns": "yes"}}})


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"cni": {"conf_dir": "/x", "bogus_dir": "/y"}}, "'cni.bogus_dir'"),
        ({"runtimes": {"runc": {"path": "runc", "binary": "x"}}}, "'runtimes.runc.binary'"),
        ({"streaming": {"port": "10010"}}, "streaming.port"),
        ({"streaming": {"port": True}}, "streaming.port"),
        ({"streaming": {"port": 70000}}, "streaming.port"),
        ({"cni": {"bin_dirs": "/opt/cni/bin"}}, "cni.bin_dirs"),
        ({"cni": {"bin_dirs": ["relative"]}}, "cni.bin_dirs[0]"),
        ({"cni": "x"}, "cni"),
        ({"log_level": "loud"}, "log_level"),
        ({"root": "relative/dir"}, "root"),
        ({"listen": "tcp://127.0.0.1:1"}, "listen"),
        ({"sandbox_image": ""}, "sandbox_image"),
        ({"default_runtime": "kata"}, "default_runtime"),
        ({"runtimes": {"x": {"path": "/nonexistent/runtime"}}}, "runtimes.x.path"),
        ({"runtimes": {"x": {"path": "runc", "root": "rel"}}}, "runtimes.x.root"),
        ({"runtimes": {"bad name": {"path": "runc"}}}, "runtimes.bad name"),
        ({"registry": {"hosts_dir": 3}}, "registry.hosts_dir"),
        ({"images": {"max_unpacked_layer_size": -1}}, "images.max_unpacked_layer_size"),
        ({"images": {"max_unpacked_layer_size": "1G"}}, "images.max_unpacked_layer_size"),
    ],
)
def test_bad_values_name_the_key(table: dict, names: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_table(table)
    assert names in str(e.value)


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        from_table({}, {"log_level": "verbose"})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("root = \n")
    with pytest.raises(ConfigError, match=str(bad)):
        load(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "missing.toml"))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[streaming]\nadress = '0.0.0.0'\n")
    with pytest.raises(ConfigError, match=r"unknown.toml: unknown key 'streaming.adress'"):
        load(str(unknown))


def test_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'root = "/srv/crispy"\n'
        'listen = "/run/c.sock"\n'
        "[streaming]\naddress = '0.0.0.0'\nport = 10010\n"
        "[cni]\nbin_dirs = ['/usr/lib/cni']\n"
    )
    cfg = load(str(f))
    assert cfg.root == "/srv/crispy"
    assert cfg.socket_path == "/run/c.sock"
    assert cfg.streaming.port == 10010
    assert cfg.cni.bin_dirs == ["/usr/lib/cni"]
    assert cfg.to_dict()["streaming"] == {
        "address": "0.0.0.0",
        "port": 10010,
        "tls_cert_file": "",
        "tls_key_file": "",
        "idle_timeout": 14400.0,
    }


def test_default_file_is_optional(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert load(None).root == "/var/lib/crispy"


def test_streaming_idle_timeout_is_a_number_of_seconds() -> None:
    assert from_table({"streaming": {"idle_timeout": 60}}).streaming.idle_timeout == 60.0
    assert from_table({}).streaming.idle_timeout == 4 * 3600
    for bad in ("4h", True):
        with pytest.raises(ConfigError, match=r"streaming\.idle_timeout: expected a number"):
            from_table({"streaming": {"idle_timeout": bad}})
    with pytest.raises(ConfigError, match="must be >= 0"):
        from_table({"streaming": {"idle_timeout": -1}})


def test_max_unpacked_layer_size_defaults_to_64_gib_and_0_turns_it_off() -> None:
    assert from_table({}).images.max_unpacked_layer_size == 64 << 30 == DEFAULT_MAX_LAYER_SIZE
    off = from_table({"images": {"max_unpacked_layer_size": 0}})
    assert off.images.max_unpacked_layer_size == 0
