"""API keys: where a hosted backend finds its key, and the key store that can hold it.

`resolve_key` looks in the backend's ``api_key`` option, then an environment variable, then
the key store: keys by name in ``<config dir>/keys.json``, mode 0600, written by
``rung keys set openai`` (rung-prompt) or `set_key`. Values stay `SecretStr` so they never
print by accident, and a resolved key remembers where it came from (named in errors, never
the value).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from rung.errors import RungError
from rung.paths import config_dir, ensure_config_dir

FILE_NAME = "keys.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def keys_path() -> Path:
    return config_dir() / FILE_NAME


def _read() -> dict[str, str]:
    path = keys_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise RungError(f"cannot read the key store {path}: {exc.strerror}") from None
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError:
        raise RungError(f"the key store {path} is not valid JSON; fix or delete it") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RungError(f"the key store {path} must map names to strings; fix or delete it")
    return data


def _write(data: dict[str, str]) -> None:
    directory = ensure_config_dir()
    path = directory / FILE_NAME
    tmp = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RungError(f"key name '{name}': use letters, digits, '.', '_' or '-' (e.g. openai)")
    return name


def get_key(name: str) -> SecretStr | None:
    """The stored key called `name`, or None."""
    value = _read().get(name)
    return SecretStr(value) if value else None


def set_key(name: str, value: str) -> None:
    """Store (or replace) the key called `name`."""
    check_name(name)
    value = value.strip()
    if not value:
        raise RungError(f"key '{name}': the value is empty; nothing stored")
    data = _read()
    data[name] = value
    _write(data)


def remove_key(name: str) -> bool:
    """Forget the key called `name`; False if there was none."""
    data = _read()
    if name not in data:
        return False
    del data[name]
    _write(data)
    return True


def key_names() -> list[str]:
    return sorted(_read())


@dataclass(frozen=True)
class ResolvedKey:
    value: SecretStr | None
    source: str  # "the api_key option", "$OPENAI_API_KEY", "the key store ('openai')", "none"

    def __repr__(self) -> str:
        return f"ResolvedKey(source={self.source!r})"


def resolve_key(configured: SecretStr | None, env_var: str | None, store_name: str | None) -> ResolvedKey:
    """The first key found: the config option, the environment variable, the key store."""
    if configured is not None and configured.get_secret_value():
        return ResolvedKey(configured, "the api_key option")
    if env_var and os.environ.get(env_var, "").strip():
        return ResolvedKey(SecretStr(os.environ[env_var].strip()), f"${env_var}")
    if store_name:
        stored = get_key(store_name)
        if stored is not None:
            return ResolvedKey(stored, f"the key store ('{store_name}')")
    return ResolvedKey(None, "none")
