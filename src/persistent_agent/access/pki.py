"""The project CA, the servers' certificates signed by it, and the issuer's signing key.

Every hop of the fabric runs TLS with certificates from one CA of our own,
kept in the access directory: clients trust that CA alone (they pin
``ca.crt``), so a certificate from any public CA, or a stolen one for
another name, is refused. Keys are EC P-256; private keys are owner-only
(0600), certificates world-readable (0644); every file is replaced
atomically, so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from persistent_agent.errors import ConfigError
from persistent_agent.keys.secret_files import write_file, write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_NAME = "persistent-agent CA"
SIGNING_KEY = "issuer-signing.key"
CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=90)
# A kept certificate must still have this long to live; shorter, it is reissued.
RENEW_BEFORE = timedelta(days=30)
# Certificates start a little in the past: a peer whose clock lags still accepts them.
BACKDATE = timedelta(minutes=5)
FIX = "run `make access`"
# A server name or a client id: a file name and a DNS label (or JWT subject) as it is.
NAME_FORM = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class _CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------- files


def access_directory(access_dir: Path) -> Path:
    """Create *access_dir* owner-only (0700) if absent; tighten it if others can enter it."""
    access_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if access_dir.stat().st_mode & 0o077:
        access_dir.chmod(0o700)
    return access_dir


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA signatures only; a CA's key signs certificates (and revocation lists) too."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def write_public(path: Path, data: bytes) -> None:
    """Replace *path* with *data*, atomically, mode 0644, synced: certificates anyone may read."""
    write_file(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 private key in *path*, refused if others may read it or it is not one."""
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; {FIX}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds a private key but is readable by group or others (mode {mode:o}); "
            "refusing to use it: make it owner-only (chmod 600)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} does not hold a PEM private key; {FIX}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{path} does not hold an EC P-256 private key; {FIX}")
    return key


def load_cert(path: Path) -> x509.Certificate:
    """The PEM certificate in *path*; a missing or unreadable one is one line naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; {FIX}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path} does not hold a PEM certificate; {FIX}") from None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


# ---------------------------------------------------------------- the CA


def ensure_ca(access_dir: Path) -> None:
    """Make the project CA unless there is one: a new CA would orphan every pinned copy."""
    access_directory(access_dir)
    cert_path, key_path = access_dir / CA_CERT, access_dir / CA_KEY
    if cert_path.exists():
        _load_ca(access_dir)
        return
    # The key is written first: a key without its certificate is a creation cut
    # short, finished here with the same key (certificates it signed stay valid).
    if key_path.exists():
        key = load_private_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(key_path, _key_pem(key))
    write_public(cert_path, _ca_cert(key).public_bytes(serialization.Encoding.PEM))


def _ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _load_ca(access_dir: Path) -> _CA:
    """The CA, checked: present, a CA, matching its key, not expired; else one line."""
    cert_path, key_path = access_dir / CA_CERT, access_dir / CA_KEY
    if not cert_path.exists():
        raise ConfigError(f"{cert_path}: no such file; {FIX} to make the project CA")
    cert = load_cert(cert_path)
    if not key_path.exists():
        raise ConfigError(
            f"{key_path}: no such file, but {cert_path} exists: restore the CA key from a "
            f"backup, or move {cert_path} aside and {FIX} to make a new CA (then give every "
            "client the new ca.crt)"
        )
    key = load_private_key(key_path)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"{cert_path} is not a CA certificate; move it aside and {FIX}")
    if not _same_key(cert, key):
        raise ConfigError(
            f"{key_path} does not match {cert_path}: restore the pair from one backup, or "
            f"move both aside and {FIX} to make a new CA"
        )
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise ConfigError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: move ca.crt and "
            f"ca.key aside and {FIX} to make a new CA (then give every client the new ca.crt)"
        )
    return _CA(cert, key)


# ---------------------------------------------------------------- server certificates


def check_server_name(name: str) -> None:
    """Refuse a name that could not be a file name and a DNS label as it is."""
    if not NAME_FORM.fullmatch(name):
        raise ConfigError(
            f"server name {name!r} is not usable: use lower-case letters, digits and '-' "
            "(at most 63, starting with a letter or digit)"
        )


def _general_name(value: str) -> x509.GeneralName:
    """An IP address SAN for what parses as one, a DNS name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _DNS.fullmatch(value):
        raise ConfigError(
            f"{value!r} is neither an IP address nor a DNS name; fix the extra server names"
        )
    return x509.DNSName(value.lower())


def subject_names(name: str, extra_names: Sequence[str]) -> list[x509.GeneralName]:
    """The SANs *name*'s certificate must have; refuses a bad name or extra name."""
    check_server_name(name)
    wanted: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(name),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for extra in extra_names:
        general = _general_name(extra)
        if general not in wanted:
            wanted.append(general)
    return wanted


def ensure_server_cert(access_dir: Path, name: str, extra_names: Sequence[str] = ()) -> None:
    """Keep *name*'s certificate if it still serves; issue a new one otherwise.

    It serves if the current CA signed it, its key is the one beside it, its
    SANs cover localhost, *name*, the loopback addresses and *extra_names*,
    and it has more than RENEW_BEFORE (30 days) left.
    """
    wanted = subject_names(name, extra_names)
    ca = _load_ca(access_dir)
    if not _still_serves(access_dir, name, wanted, ca):
        _issue(access_dir, name, wanted, ca)


def reissue_server_cert(access_dir: Path, name: str, extra_names: Sequence[str] = ()) -> None:
    """Issue *name* a new key and certificate, whatever it had (each file replaced atomically)."""
    wanted = subject_names(name, extra_names)
    _issue(access_dir, name, wanted, _load_ca(access_dir))


def _still_serves(access_dir: Path, name: str, wanted: list[x509.GeneralName], ca: _CA) -> bool:
    cert_path, key_path = access_dir / f"{name}.crt", access_dir / f"{name}.key"
    if not cert_path.exists() or not key_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if any(general not in sans for general in wanted):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) <= RENEW_BEFORE:
        return False
    # A key cut short by a crash (written before its certificate) does not match.
    return _same_key(cert, load_private_key(key_path))


def _issue(access_dir: Path, name: str, wanted: list[x509.GeneralName], ca: _CA) -> None:
    """Write a new key, then its certificate: a crash between the two leaves a mismatch
    that the next :func:`ensure_server_cert` sees and mends."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    access_directory(access_dir)
    write_private(access_dir / f"{name}.key", _key_pem(key))
    write_public(access_dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------- expiry


def expiry(path: Path) -> datetime:
    """When the certificate in *path* stops being valid (UTC)."""
    return load_cert(path).not_valid_after_utc


def expiring(access_dir: Path, within: timedelta) -> list[tuple[str, datetime]]:
    """Every certificate file in *access_dir* (CA included) that expires within *within*.

    Pairs of (file name, e.g. ``"sentinel.crt"``, expiry), soonest first; an
    expired one is listed too.
    """
    limit = datetime.now(UTC) + within
    found = [(path.name, expiry(path)) for path in sorted(access_dir.glob("*.crt"))]
    return sorted(((name, when) for name, when in found if when <= limit), key=lambda p: p[1])


# ---------------------------------------------------------------- the issuer's signing key


def ensure_signing_key(access_dir: Path) -> None:
    """Make the token issuer's signing key once: kept, tokens it signed stay verifiable."""
    path = access_directory(access_dir) / SIGNING_KEY
    if path.exists():
        load_private_key(path)
        return
    write_private(path, _key_pem(ec.generate_private_key(ec.SECP256R1())))
