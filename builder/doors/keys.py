"""API keys of a server for many shops: a JSON file of the keys' SHA-256 hashes (never the
keys), each key limited to the shops it may ask for.

    builder keys add keys.json shop-a-site --shop shop_a      # prints the new key, once
    builder keys add keys.json agency --shop '*'              # every shop the server has
    builder keys list keys.json                               # names and shops, no keys
    builder keys remove keys.json shop-a-site
    builder serve runs/ --keys keys.json                      # clients send "Bearer KEY"

    {"keys": [{"name": "shop-a-site", "sha256": "9f2c...", "shops": ["shop_a"],
               "created": "2026-12-07T04:00:00+00:00"}]}

A key is 32 random bytes (URL-safe base64, "sk-" in front); its hash alone is written, whole
or not at all (write_atomic), and read again by a running server when the file changes, so a
key added or removed takes effect without a restart.
"""

import hashlib
import hmac
import json
import logging
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import UserError
from builder.run import write_atomic

EVERY_SHOP = "*"
log = logging.getLogger(__name__)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> list[dict]:
    """The file's keys, checked; a clear error for a file that is not a keys file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such keys file; make one with `builder keys add {path} "
                        "NAME --shop SHOP`") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a keys file ({err})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise UserError(f'{path}: not a keys file: expected {{"keys": [...]}}')
    for i, key in enumerate(keys, 1):
        ok = (isinstance(key, dict) and isinstance(key.get("name"), str)
              and isinstance(key.get("sha256"), str) and len(key["sha256"]) == 64
              and isinstance(key.get("shops"), list)
              and all(isinstance(s, str) for s in key["shops"]))
        if not ok:
            raise UserError(f'{path}: key {i} needs "name", "sha256" (64 hex digits) and '
                            '"shops" (a list of shop names, or ["*"])')
    return keys


def add_key(path: Path, name: str, shops: list[str]) -> str:
    """A new key for `shops`, its hash added to the file (made when missing); the key."""
    path = Path(path)
    keys = read_keys(path) if path.exists() else []
    if not name.strip():
        raise UserError("give the key a name (who uses it: a site, an agency)")
    if any(k["name"] == name for k in keys):
        raise UserError(f"{path}: a key named {name!r} exists; remove it first or pick another "
                        "name")
    if not shops:
        raise UserError("say which shops the key may ask for: --shop NAME (repeatable), or "
                        f"--shop '{EVERY_SHOP}' for every shop")
    key = "sk-" + secrets.token_urlsafe(32)
    keys.append({"name": name, "sha256": digest(key), "shops": sorted(set(shops)),
                 "created": datetime.now(UTC).isoformat(timespec="seconds")})
    write_atomic(path, json.dumps({"keys": keys}, ensure_ascii=False, indent=2) + "\n", 0o600)
    return key


def remove_key(path: Path, name: str) -> None:
    keys = read_keys(Path(path))
    kept = [k for k in keys if k["name"] != name]
    if len(kept) == len(keys):
        raise UserError(f"{path}: no key named {name!r}")
    write_atomic(Path(path), json.dumps({"keys": kept}, ensure_ascii=False, indent=2) + "\n",
                 0o600)


class Keys:
    """The keys a server accepts: a keys file (re-read when it changes) and/or one key for
    every shop ($BUILDER_API_KEY). A keys file removed while serving accepts no key from it
    (removing it revokes them); one made unreadable keeps the keys read last, with a warning."""

    def __init__(self, path: Path | None = None, every_shop_key: str | None = None):
        self.path, self.every_shop_key = (Path(path) if path else None), every_shop_key
        self._lock = threading.Lock()
        self._seen, self._keys = None, []
        if self.path is not None:
            self._keys = read_keys(self.path)  # (a missing or broken file: said at start)
            self._seen = self._version()

    def _version(self):
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _reload(self) -> None:
        seen = self._version()
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            self._keys = []
            log.warning("%s was removed: its keys are refused from now on", self.path)
            return
        try:
            self._keys = read_keys(self.path)
        except UserError as err:
            log.warning("%s: not read (%s); the keys read before it changed still apply",
                        self.path, err)

    def shops_of(self, key: str) -> set[str] | None:
        """The shops `key` may ask for ({"*"}: every one), or None for a key not accepted."""
        if self.every_shop_key is not None and hmac.compare_digest(
                key.encode(), self.every_shop_key.encode()):
            return {EVERY_SHOP}
        if self.path is None:
            return None
        with self._lock:
            self._reload()
            hashed = digest(key)
            for entry in self._keys:
                if hmac.compare_digest(entry["sha256"].encode(), hashed.encode()):
                    return set(entry["shops"])
        return None

    def allows(self, key: str, shop: str) -> bool:
        shops = self.shops_of(key)
        return shops is not None and (EVERY_SHOP in shops or shop in shops)
