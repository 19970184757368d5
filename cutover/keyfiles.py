"""Ed25519 key files: an operator's or a worker's key pair (NAME.key, PKCS8 PEM 0600, and
NAME.pub, one line), read and written the one way the CLI and the workers share."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from cutover.signing import public_key_text

#: A key's name is its principal's name and its files' stem.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: A loaded key: (its name, the private key).
Key = tuple[str, Ed25519PrivateKey]


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(
            f"key name '{name}': expected letters, digits, '.', '_' or '-' (at most 64, "
            "starting with a letter or digit); it is the principal's name in the site config"
        )
    return name


def create_key(name: str, directory: Path) -> tuple[Path, Path, str]:
    """Write DIR/NAME.key (PKCS8 PEM, 0600) and DIR/NAME.pub; never overwrites either."""
    check_name(name)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise ValueError(
                f"{path} exists: refusing to overwrite a key (a principal's public key in "
                "site configs would stop matching); remove it first, or choose another --dir"
            )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    text = public_key_text(key.public_key())
    public.write_text(text + "\n", encoding="utf-8")
    return private, public, text


def load_private_key(path: str | Path) -> Key:
    """(NAME, key) from NAME.key as `cutover keys create` wrote it; errors name the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"key file {p}: cannot read it ({exc.strerror or exc})") from None
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"key file {p}: it is encrypted; cutover reads unencrypted PKCS8 PEM keys "
            "(`cutover keys create` writes them, mode 0600)"
        ) from None
    except ValueError:
        raise ValueError(
            f"key file {p}: not a PEM private key (expected the NAME.key `cutover keys "
            "create` writes, not the .pub)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"key file {p}: a {type(key).__name__}, expected an Ed25519 key")
    try:
        name = check_name(p.stem)
    except ValueError as exc:
        raise ValueError(f"key file {p}: {exc}") from None
    return name, key
