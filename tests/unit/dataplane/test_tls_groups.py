"""Server contexts offer only Mozilla's intermediate key-exchange groups."""

from __future__ import annotations

import ssl

import pytest
import trustme

from meshgate.dataplane.tls_groups import restrict_groups


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A full handshake over memory BIOs; raises ssl.SSLError when it fails."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="example.com")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, side in (("c", c), ("s", s)):
            if done[name]:
                continue
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


@pytest.fixture
def contexts() -> tuple[ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("example.com").configure_cert(server)
    return server, ca


@pytest.mark.parametrize("group", ["X448", "secp521r1"])
def test_groups_outside_the_profile_are_refused(
    contexts: tuple[ssl.SSLContext, trustme.CA], group: str
) -> None:
    server, ca = contexts
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.set_ecdh_curve(group)  # the client offers this group only
    _handshake(server, client)  # OpenSSL's defaults take it...
    assert restrict_groups(server)
    with pytest.raises(ssl.SSLError):
        _handshake(server, client)  # ...meshgate's list does not


@pytest.mark.parametrize("group", ["X25519", "prime256v1", "secp384r1"])
def test_the_profiles_groups_still_work(
    contexts: tuple[ssl.SSLContext, trustme.CA], group: str
) -> None:
    server, ca = contexts
    assert restrict_groups(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.set_ecdh_curve(group)
    _handshake(server, client)


def test_a_bad_list_is_refused_and_changes_nothing(
    contexts: tuple[ssl.SSLContext, trustme.CA],
) -> None:
    server, ca = contexts
    assert not restrict_groups(server, "no-such-group")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    _handshake(server, client)
