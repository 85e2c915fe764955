"""Creates a new data directory: configuration, key material and the database schema."""

from __future__ import annotations

import os
from pathlib import Path

from bastion.config import CONFIG_FILE, load_config, parse_host_port, render_default_toml
from bastion.errors import Conflict, UsageError
from bastion.keys import create_host_keys, create_node_key, create_tls_material
from bastion.store.engine import make_engine
from bastion.store.migrate import upgrade
from bastion.vault import create_master_key


async def init_data_dir(data_dir: Path, listen: str = "127.0.0.1:8022", database_url: str = "") -> Path:
    """Refuses an existing non-empty directory, so nothing is ever overwritten."""
    try:
        parse_host_port(listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    data_dir = data_dir.absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise Conflict(f"{data_dir} already exists and is not empty; refusing to overwrite it")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    toml = render_default_toml(listen)
    if database_url:
        toml = toml.replace('# database_url = ""', f'database_url = "{database_url}"')
    (data_dir / CONFIG_FILE).write_text(toml, encoding="utf-8")
    config = load_config(data_dir, environ={})
    keys = config.keys_dir
    keys.mkdir(mode=0o700, exist_ok=True)
    create_master_key(keys)
    create_host_keys(keys)
    create_tls_material(keys)
    create_node_key(keys)
    config.recordings_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(load_config(data_dir).database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return data_dir
