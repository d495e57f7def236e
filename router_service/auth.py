"""API keys: where they come from, how a presented key is checked, which roles a key may use.

Pure Python (no FastAPI, no Ray), used by the ingress (router_service.guard). Only SHA-256
digests of the keys are kept in memory. A presented key is hashed and compared with EVERY
stored digest by ``hmac.compare_digest``, without stopping at a match, so neither the position
of a key in the list nor how many leading characters matched shows up in the response time.

Keys come from three places, all optional and merged:
- the app config (``auth.api_keys``: name, key, roles);
- an environment variable (``auth.keys_env``, default ``PREFILLSHARE_API_KEYS``);
- a file (``auth.keys_file``), e.g. a Kubernetes Secret mounted as a volume; it is re-read
  when it changes, so a rotated Secret takes effect without a restart.

The environment variable and the file hold entries ``KEY`` or ``KEY:role1,role2``, separated
by whitespace or newlines; in the file, ``#`` starts a comment. A key named in no entry of
roles may use every role. Keys never appear in messages or logs: errors name the source and
entry number, and a key from the environment or a file is named ``key-<first 8 hex of its
SHA-256>`` for logs and rate limits.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_LENGTH = 16
# A key may hold anything a header value can carry except whitespace and ':' (the role
# separator); base64, hex and `sk-...` keys all fit.
_KEY_CHARS = re.compile(r"^[!-9;-~]+$")


class KeyConfigError(ValueError):
    """A bad key entry; the message names where it is, never the key itself."""


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: a name for logs and rate limits, the digest, the roles it may use."""

    name: str
    digest: bytes
    roles: frozenset[str] | None = None  # None: every role
    # Per-key rate limit overrides (requests per second, burst); None: the default limit.
    rate_per_s: float | None = None
    burst: int | None = None

    def may_use(self, role: str) -> bool:
        return self.roles is None or role in self.roles


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_key_text(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise KeyConfigError(f"{where}: API keys must be at least {MIN_KEY_LENGTH} characters")
    if not _KEY_CHARS.match(key):
        raise KeyConfigError(
            f"{where}: API keys are printable ASCII without spaces or ':'")


def make_key(name: str, key: str, roles: Iterable[str] | None = None, *,
             where: str = "api key", rate_per_s: float | None = None,
             burst: int | None = None) -> ApiKey:
    check_key_text(key, where)
    return ApiKey(name, digest_of(key), None if roles is None else frozenset(roles),
                  rate_per_s, burst)


def parse_key_entries(text: str, source: str) -> list[ApiKey]:
    """Entries ``KEY`` or ``KEY:role1,role2`` separated by whitespace; ``#`` comments."""
    keys: list[ApiKey] = []
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    for n, entry in enumerate((e for line in lines for e in line.split()), start=1):
        where = f"{source}, entry {n}"
        key, sep, role_list = entry.partition(":")
        roles = None
        if sep:
            roles = [r for r in role_list.split(",") if r]
            if not roles:
                raise KeyConfigError(f"{where}: ':' must be followed by role names")
        keys.append(make_key(f"key-{digest_of(key).hex()[:8]}", key, roles, where=where))
    return keys


class KeyStore:
    """The accepted keys. ``authenticate`` is the only way a presented key is checked."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def authenticate(self, presented: str) -> ApiKey | None:
        digest = digest_of(presented)
        found: ApiKey | None = None
        for entry in self._keys:  # every key, no early exit: the time does not tell which
            match = hmac.compare_digest(digest, entry.digest)
            found = entry if match else found
        return found

    def check_roles(self, known_roles: Iterable[str]) -> None:
        known = set(known_roles)
        for entry in self._keys:
            unknown = sorted((entry.roles or frozenset()) - known)
            if unknown:
                raise KeyConfigError(
                    f"API key {entry.name} names unknown roles {unknown} (have {sorted(known)})")


@dataclass(frozen=True)
class KeySources:
    """Where keys come from; ``load`` reads them all (the env var and file at call time)."""

    configured: tuple[ApiKey, ...] = ()
    env_var: str | None = None
    file: Path | None = None

    def load(self, environ: dict[str, str] | None = None) -> KeyStore:
        env = os.environ if environ is None else environ
        keys = list(self.configured)
        if self.env_var and env.get(self.env_var):
            keys.extend(parse_key_entries(env[self.env_var], f"${self.env_var}"))
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyConfigError(f"cannot read the API keys file {self.file}: "
                                     f"{exc.strerror or exc}") from None
            keys.extend(parse_key_entries(text, str(self.file)))
        names = [k.name for k in keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise KeyConfigError(f"API keys given more than once: {dupes}")
        return KeyStore(keys)

    def file_stamp(self) -> tuple[float, int] | None:
        """What changes when the file is replaced (a Secret update swaps a symlink)."""
        if self.file is None:
            return None
        try:
            st = self.file.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)
