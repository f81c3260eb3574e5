"""The project CA and server certificates: real keys, real files, real TLS handshakes."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from persistent_agent.access import pki
from persistent_agent.errors import ConfigError


@pytest.fixture
def access(tmp_path: Path) -> Path:
    directory = tmp_path / "config" / "access"
    pki.ensure_ca(directory)
    return directory


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def handshake(access: Path, server_name: str, hostname: str) -> None:
    """A real TLS handshake (in memory) between *server_name*'s cert and a client pinning the CA.

    The client is as strict as Python gets (VERIFY_X509_STRICT, the 3.13 default).
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(access / f"{server_name}.crt", access / f"{server_name}.key")
    client_ctx = ssl.create_default_context(cafile=access / pki.CA_CERT)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_ca_is_made_once_with_its_files_modes_and_ten_years(tmp_path: Path) -> None:
    access = tmp_path / "access"
    pki.ensure_ca(access)
    ca = cert(access / pki.CA_CERT)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == pki.CA_NAME
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=3649) < lifetime <= timedelta(days=3650)
    assert (mode(access), mode(access / "ca.crt"), mode(access / "ca.key")) == (0o700, 0o644, 0o600)
    before = {p.name: p.read_bytes() for p in access.iterdir()}
    pki.ensure_ca(access)
    assert {p.name: p.read_bytes() for p in access.iterdir()} == before


def test_server_cert_names_usage_signer_and_lifetime(access: Path) -> None:
    pki.ensure_server_cert(access, "sentinel", ["sentinel.example.org", "10.1.2.3"])
    leaf = cert(access / "sentinel.crt")
    leaf.verify_directly_issued_by(cert(access / pki.CA_CERT))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost", "sentinel", "sentinel.example.org",
    }  # fmt: skip
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=89) < lifetime <= timedelta(days=90)
    assert (mode(access / "sentinel.crt"), mode(access / "sentinel.key")) == (0o644, 0o600)
    for hostname in ("localhost", "sentinel", "sentinel.example.org", "127.0.0.1", "::1"):
        handshake(access, "sentinel", hostname)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(access, "sentinel", "elsewhere.example.org")


def test_a_client_pinning_another_ca_refuses_the_cert(access: Path, tmp_path: Path) -> None:
    pki.ensure_server_cert(access, "issuer")
    other = tmp_path / "other"
    pki.ensure_ca(other)
    (access / "ca.crt").rename(access / "ours.crt")
    (access / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(access, "issuer", "localhost")


def test_a_serving_cert_is_kept_and_a_new_name_reissues_it(access: Path) -> None:
    pki.ensure_server_cert(access, "issuer", ["issuer.local"])
    first = (access / "issuer.crt").read_bytes(), (access / "issuer.key").read_bytes()
    pki.ensure_server_cert(access, "issuer", ["issuer.local"])
    pki.ensure_server_cert(access, "issuer")  # fewer names: still covered
    assert ((access / "issuer.crt").read_bytes(), (access / "issuer.key").read_bytes()) == first
    pki.ensure_server_cert(access, "issuer", ["issuer.local", "192.168.7.7"])
    assert (access / "issuer.key").read_bytes() != first[1]
    sans = cert(access / "issuer.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("192.168.7.7") in sans.value.get_values_for_type(x509.IPAddress)
    handshake(access, "issuer", "192.168.7.7")


def test_reissue_always_makes_a_new_pair(access: Path) -> None:
    pki.ensure_server_cert(access, "sentinel")
    before = (access / "sentinel.key").read_bytes()
    pki.reissue_server_cert(access, "sentinel")
    assert (access / "sentinel.key").read_bytes() != before
    handshake(access, "sentinel", "localhost")
    assert not [p for p in access.iterdir() if p.name.endswith(".tmp")]


def _short_lived(access: Path, name: str, days: int) -> None:
    """Write *name* a CA-signed certificate with *days* left, as an aging one would be."""
    ca_key = serialization.load_pem_private_key((access / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(name)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(cert(access / "ca.crt").subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=80))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (access / f"{name}.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (access / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (access / f"{name}.key").chmod(0o600)


def test_a_cert_with_30_days_or_less_left_is_renewed(access: Path) -> None:
    _short_lived(access, "sentinel", days=31)
    kept = (access / "sentinel.crt").read_bytes()
    pki.ensure_server_cert(access, "sentinel")
    assert (access / "sentinel.crt").read_bytes() == kept
    _short_lived(access, "sentinel", days=29)
    pki.ensure_server_cert(access, "sentinel")
    assert pki.expiry(access / "sentinel.crt") - datetime.now(UTC) > timedelta(days=89)


def test_a_key_left_without_its_cert_by_a_crash_is_mended(access: Path) -> None:
    pki.ensure_server_cert(access, "sentinel")
    other = ec.generate_private_key(ec.SECP256R1())
    (access / "sentinel.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.ensure_server_cert(access, "sentinel")
    handshake(access, "sentinel", "localhost")


def test_expiring_lists_certs_soonest_first(access: Path) -> None:
    pki.ensure_server_cert(access, "issuer")
    _short_lived(access, "sentinel", days=10)
    assert pki.expiring(access, timedelta(days=1)) == []
    assert [name for name, _ in pki.expiring(access, timedelta(days=20))] == ["sentinel.crt"]
    soon = pki.expiring(access, timedelta(days=4000))
    assert [name for name, _ in soon] == ["sentinel.crt", "issuer.crt", "ca.crt"]
    assert soon[2][1] == pki.expiry(access / "ca.crt")


def test_no_ca_is_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        pki.ensure_server_cert(tmp_path / "access", "sentinel")
    message = str(caught.value)
    assert "ca.crt" in message and "make access" in message and "\n" not in message


def test_a_damaged_ca_is_refused_in_one_line(access: Path) -> None:
    (access / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca\.crt does not hold a PEM certificate"):
        pki.ensure_server_cert(access, "sentinel")
    with pytest.raises(ConfigError, match=r"ca\.crt does not hold a PEM certificate"):
        pki.ensure_ca(access)


def test_a_lost_ca_key_is_refused_not_replaced(access: Path) -> None:
    (access / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key: no such file, but .*ca\.crt exists"):
        pki.ensure_ca(access)
    assert not (access / "ca.key").exists()


def test_a_ca_key_others_can_read_is_refused(access: Path) -> None:
    (access / "ca.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as caught:
        pki.ensure_server_cert(access, "sentinel")
    assert "BEGIN" not in str(caught.value)


def test_a_ca_cut_short_after_its_key_is_finished_with_that_key(access: Path) -> None:
    pki.ensure_server_cert(access, "sentinel")
    (access / "ca.crt").unlink()
    pki.ensure_ca(access)
    handshake(access, "sentinel", "localhost")  # the old cert verifies against the new ca.crt


@pytest.mark.parametrize("name", ["Sentinel", "../x", "", "a" * 64])
def test_bad_server_names_are_refused(access: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="server name"):
        pki.ensure_server_cert(access, name)


def test_bad_extra_names_are_refused(access: Path) -> None:
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        pki.ensure_server_cert(access, "sentinel", ["bad name!"])
    assert not (access / "sentinel.crt").exists()


def test_the_signing_key_is_made_once(tmp_path: Path) -> None:
    pki.ensure_signing_key(tmp_path / "access")
    path = tmp_path / "access" / pki.SIGNING_KEY
    first = path.read_bytes()
    assert mode(path) == 0o600
    pki.ensure_signing_key(tmp_path / "access")
    assert path.read_bytes() == first
