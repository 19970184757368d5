"""The TSIG key: read from the site's BIND key file (as `tsig-keygen` writes it) at the
moment it signs; its secret never reaches a log line, an error message or a result.
"""

from __future__ import annotations

import base64
import binascii
import re

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from cutover.errors import config_error

# --------------------------------------------------------------------------- the key


class TsigKey(dns.tsig.Key):
    """A TSIG key whose repr and str never show its secret (dnspython's repr does)."""

    def __init__(self, name: str, secret: bytes, algorithm: dns.name.Name, source: str) -> None:
        super().__init__(name, secret, algorithm)
        self.source = source

    def __repr__(self) -> str:
        return f"<TSIG key {self.name} ({self.algorithm}) from {self.source}, secret hidden>"

    __str__ = __repr__

    @property
    def label(self) -> str:
        return f"TSIG key '{self.name.to_text(omit_final_dot=True)}' (from {self.source})"


_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
# Quoted strings first, so a `//` or `#` inside a base64 secret is not taken for a comment.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|/\*.*?\*/|//[^\n]*|#[^\n]*|[{};]|[^\s{};"]+', re.DOTALL)


def parse_tsig_key(text: str, source: str = "the key file") -> TsigKey:
    """The one key in a BIND key file: ``key "name" { algorithm hmac-sha256; secret "..."; };``.

    Errors name the file and the key, never the secret (nor any part of it).
    """
    tokens = [
        t[1:-1] if t.startswith('"') else t
        for t in _TOKEN.findall(text)
        if not t.startswith(("#", "//", "/*"))
    ]
    keys: list[tuple[str, dict[str, str]]] = []
    i = 0
    bad = config_error(
        f"{source} is not a BIND key file: expected "
        'key "NAME" { algorithm hmac-sha256; secret "BASE64"; }; (as tsig-keygen writes it)'
    )
    while i < len(tokens):
        if tokens[i] != "key" or i + 2 >= len(tokens) or tokens[i + 2] != "{":
            raise bad
        name, fields = tokens[i + 1], {}
        i += 3
        while i < len(tokens) and tokens[i] != "}":
            stmt: list[str] = []
            while i < len(tokens) and tokens[i] not in (";", "}"):
                stmt.append(tokens[i])
                i += 1
            if i < len(tokens) and tokens[i] == ";":
                i += 1
            if len(stmt) == 2:
                fields[stmt[0].lower()] = stmt[1]
            elif stmt:
                raise bad
        if i >= len(tokens):
            raise bad
        i += 1  # "}"
        if i < len(tokens) and tokens[i] == ";":
            i += 1
        keys.append((name, fields))
    if len(keys) != 1:
        raise config_error(
            f"{source} holds {len(keys)} keys; the site's dns.tsigKeyFile must hold exactly one"
        )
    name, fields = keys[0]
    algorithm = fields.get("algorithm", "").lower()
    if algorithm not in _ALGORITHMS:
        raise config_error(
            f"key '{name}' in {source}: algorithm {algorithm or '(missing)'!r} is not one of "
            + ", ".join(_ALGORITHMS)
        )
    try:
        secret = base64.b64decode(fields.get("secret", ""), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if not secret:
        raise config_error(f"key '{name}' in {source}: the secret is missing or not valid base64")
    try:
        return TsigKey(name, secret, _ALGORITHMS[algorithm], source)
    except dns.exception.DNSException:
        raise config_error(f"{source}: {name!r} is not a valid key name") from None


def load_tsig_key(path: str) -> TsigKey:
    """Read the key file now (the worker reads it each time it signs; nothing caches it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise config_error(
            f"the TSIG key file {path} (site dns.tsigKeyFile) does not exist"
        ) from None
    except PermissionError:
        raise config_error(f"the worker may not read the TSIG key file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(f"cannot read the TSIG key file {path}: {type(exc).__name__}") from None
    return parse_tsig_key(text, path)
