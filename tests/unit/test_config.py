"""Settings table: defaults, TOML, environment overrides, and one clear line per bad value."""

import subprocess
import sys

import pytest

from bastion.config import SETTINGS, env_name, load_config, render_default_toml
from bastion.errors import ConfigError


def test_defaults_without_file(tmp_path):
    config = load_config(tmp_path, environ={})
    assert config.listen == ("127.0.0.1", 8022)
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"
    assert config["ssh.login_timeout"] == 60.0


def test_every_setting_has_help_and_a_valid_default(tmp_path):
    for setting in SETTINGS:
        assert setting.help and setting.name
        assert setting.parse(setting.default) == setting.default or setting.default == ()


def test_rendered_default_toml_loads_back(tmp_path):
    (tmp_path / "bastion.toml").write_text(render_default_toml("127.0.0.1:9000"))
    assert load_config(tmp_path, environ={}).listen == ("127.0.0.1", 9000)


def test_toml_sections_and_env_override(tmp_path):
    (tmp_path / "bastion.toml").write_text('listen = "[::1]:2222"\n[ssh]\nlogin_timeout = 5\n')
    config = load_config(tmp_path, environ={env_name("ssh.login_timeout"): "7.5"})
    assert config.listen == ("::1", 2222)
    assert config["ssh.login_timeout"] == 7.5


@pytest.mark.parametrize("toml, key", [
    ('listen = "nonsense"\n', "listen"),
    ('listen = "127.0.0.1:70000"\n', "listen"),
    ('[ssh]\nlogin_timeout = -1\n', "ssh.login_timeout"),
    ('[ssh]\nlogin_timeout = "abc"\n', "ssh.login_timeout"),
    ('[ssh]\nwindow = 1.5\n', "ssh.window"),
    ('[auth]\ndefault_min_level = 4\n', "auth.default_min_level"),
    ('[listener]\nproxy_protocol_from = ["not-an-ip"]\n', "listener.proxy_protocol_from"),
    ('database_url = "mysql://x"\n', "database_url"),
    ('no_such_setting = 1\n', "no_such_setting"),
    ('[ssh]\npost_quantum_only = "maybe"\n', "ssh.post_quantum_only"),
    ('[ssh]\nciphers = ["3des-cbc"]\n', "ssh.ciphers"),
    ('[ssh]\nciphers = []\n', "ssh.ciphers"),
    ('[ssh]\nciphers = ",,"\n', "ssh.ciphers"),
    ('[ssh]\nciphers = [1]\n', "ssh.ciphers"),
    ('[ssh]\nciphers = ["aes128-gcm@openssh.com", "none"]\n', "ssh.ciphers"),
    ('event_loop = "twisted"\n', "event_loop"),
    ('[session]\nidle_timeout = -5\n', "session.idle_timeout"),
    ('[publish]\ndownload_minutes = 0\n', "publish.download_minutes"),
    ('[publish]\ndownload_minutes = "an hour"\n', "publish.download_minutes"),
    ('[publish]\ndownload_minutes = 1e10\n', "publish.download_minutes"),  # would overflow the date it opens
    ('[publish]\napproval_minutes = 1e10\n', "publish.approval_minutes"),
])
def test_bad_values_name_the_key(tmp_path, toml, key):
    (tmp_path / "bastion.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    message = info.value.safe_message
    assert key in message and "\n" not in message


def test_minutes_up_to_a_year_are_taken(tmp_path):
    config = load_config(tmp_path, environ={"BASTION_PUBLISH_DOWNLOAD_MINUTES": "527040",
                                            "BASTION_PUBLISH_APPROVAL_MINUTES": "0.5"})
    assert (config["publish.download_minutes"], config["publish.approval_minutes"]) == (527040.0, 0.5)


def test_broken_toml_is_one_clear_line(tmp_path):
    (tmp_path / "bastion.toml").write_text("listen = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path, environ={})


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="BASTION_SSH_WINDOW"):
        load_config(tmp_path, environ={"BASTION_SSH_WINDOW": "lots"})


def test_config_check_cli_exits_2_with_one_line_and_changes_nothing(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "bastion", "init", "--data-dir", str(data)], check=True,
                   capture_output=True)
    toml = data / "bastion.toml"
    toml.write_text(toml.read_text().replace("# login_timeout = 60.0", "login_timeout = 0"))
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    result = subprocess.run([sys.executable, "-m", "bastion", "config", "check", "--data-dir", str(data)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ssh.login_timeout" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before
    serve = subprocess.run([sys.executable, "-m", "bastion", "serve", "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=30)
    assert serve.returncode == 2 and "ssh.login_timeout" in serve.stderr


def test_ssh_ciphers_keeps_the_operators_order_and_drops_repeats(tmp_path):
    config = load_config(tmp_path, environ={
        env_name("ssh.ciphers"): " aes256-gcm@openssh.com,aes128-gcm@openssh.com, aes256-gcm@openssh.com "})
    assert config["ssh.ciphers"] == ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
