"""The Ingress annotation table: value formats as ingress-nginx reads them, and what is reported."""

from __future__ import annotations

import pytest

from meshgate.config.annotations import (
    ANNOTATIONS,
    AnnotationProblem,
    IngressAnnotations,
    markdown_table,
    parse_annotations,
    parse_cidrs,
    parse_size,
)


def values(**annotations: str) -> IngressAnnotations:
    parsed = parse_annotations(
        {f"meshgate.io/{k.replace('_', '-')}": v for k, v in annotations.items()}
    )
    assert parsed.problems == ()
    return parsed.values


def problem(key: str, value: object) -> AnnotationProblem:
    parsed = parse_annotations({key: value})
    [found] = parsed.problems
    assert found.key == key
    return found


def test_no_annotations_are_the_defaults() -> None:
    parsed = parse_annotations({})
    assert parsed.values == IngressAnnotations()
    assert parsed.values.proxy_ssl_verify  # verify unless told not to
    assert parsed.values.max_body is None  # no limit unless set
    assert (parsed.problems, parsed.notes) == ((), ())


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("False", False), (" TRUE ", True)])
def test_booleans(text: str, expected: bool) -> None:
    assert values(use_regex=text).use_regex is expected


@pytest.mark.parametrize("text", ["yes", "1", "on", ""])
def test_booleans_are_true_or_false_only(text: str) -> None:
    assert problem("meshgate.io/ssl-passthrough", text).reason == (
        f'expected "true" or "false", got {text!r}'
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60", 60.0), ("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1.5", 1.5)],
)
def test_durations_are_seconds_or_carry_a_unit(text: str, seconds: float) -> None:
    assert values(proxy_read_timeout=text).read_timeout == seconds
    assert values(proxy_connect_timeout=text).connect_timeout == seconds


@pytest.mark.parametrize("text", ["0", "-5", "soon", "5 minutes", ""])
def test_invalid_durations(text: str) -> None:
    assert "expected seconds" in problem("meshgate.io/proxy-connect-timeout", text).reason


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1m", 1 << 20),
        ("1M", 1 << 20),
        ("8k", 8192),
        ("2g", 2 << 30),
        ("512", 512),
        ("0", None),
        ("0m", None),
    ],
)
def test_sizes_as_nginx_reads_them(text: str, size: int | None) -> None:
    assert parse_size(text) == size
    assert values(proxy_body_size=text).max_body == size


@pytest.mark.parametrize("text", ["1x", "1.5m", "-1", "", "m", "1 mb"])
def test_invalid_sizes(text: str) -> None:
    assert "expected a size" in problem("meshgate.io/proxy-body-size", text).reason


def test_cidr_lists_are_normalised() -> None:
    assert parse_cidrs("10.0.0.0/8, 192.168.0.1,,fd00::1/64 ,10.0.0.0/8") == (
        "10.0.0.0/8",
        "192.168.0.1/32",
        "fd00::/64",
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.0.0.0/33", "not an address or CIDR range: '10.0.0.0/33'"),
        ("10.0.0.0/8; 10.1.0.0/16", "not an address or CIDR range"),
        ("example.com", "not an address or CIDR range"),
        (" , ", "lists no address ranges"),
    ],
)
def test_invalid_cidr_lists(text: str, reason: str) -> None:
    assert reason in problem("meshgate.io/whitelist-source-range", text).reason


@pytest.mark.parametrize(
    ("text", "expected"), [("HTTPS", "HTTPS"), ("https", "HTTPS"), ("HTTP", "HTTP")]
)
def test_backend_protocol(text: str, expected: str) -> None:
    assert values(backend_protocol=text).backend_protocol == expected


@pytest.mark.parametrize("text", ["GRPC", "grpcs", "FCGI", "AUTO_HTTP"])
def test_other_backend_protocols_are_reported_as_unsupported(text: str) -> None:
    reason = problem("nginx.ingress.kubernetes.io/backend-protocol", text).reason
    assert reason == f"{text.upper()} is not supported: meshgate speaks HTTP and HTTPS to backends"


def test_unknown_backend_protocol() -> None:
    assert "expected" in problem("meshgate.io/backend-protocol", "SMTP").reason


def test_https_backend_settings() -> None:
    parsed = parse_annotations(
        {
            "meshgate.io/backend-protocol": "HTTPS",
            "meshgate.io/proxy-ssl-name": "API.internal.example.com",
            "meshgate.io/proxy-ssl-verify": "off",
            "meshgate.io/proxy-ssl-secret": "certs/backend-ca",
        }
    )
    assert parsed.problems == ()
    assert parsed.notes == ()
    assert parsed.values.proxy_ssl_name == "api.internal.example.com"
    assert parsed.values.proxy_ssl_verify is False
    assert parsed.values.proxy_ssl_secret == ("certs", "backend-ca")


@pytest.mark.parametrize(
    ("key", "text", "reason"),
    [
        ("meshgate.io/proxy-ssl-verify", "true", 'expected "on" or "off"'),
        ("meshgate.io/proxy-ssl-name", "*.example.com", "a wildcard cannot be used here"),
        ("meshgate.io/proxy-ssl-name", "not a name", "not a server name"),
        ("meshgate.io/proxy-ssl-secret", "backend-ca", 'expected "namespace/name"'),
        ("meshgate.io/proxy-ssl-secret", "Certs/ca", 'expected "namespace/name"'),
        ("meshgate.io/app-root", "app", "a path starts with '/'"),
        ("meshgate.io/rewrite-target", " ", "is empty"),
        ("meshgate.io/rewrite-target", "/a b", "cannot contain spaces"),
    ],
)
def test_invalid_values(key: str, text: str, reason: str) -> None:
    assert reason in problem(key, text).reason


def test_https_only_annotations_with_an_http_backend_are_noted() -> None:
    parsed = parse_annotations({"nginx.ingress.kubernetes.io/proxy-ssl-verify": "on"})
    assert parsed.problems == ()
    assert parsed.notes == (
        "annotation nginx.ingress.kubernetes.io/proxy-ssl-verify ignored: it applies to "
        "backend-protocol HTTPS only",
    )


@pytest.mark.parametrize(
    "key",
    [
        "nginx.ingress.kubernetes.io/whitelist-source-range",
        "nginx.ingress.kubernetes.io/allowlist-source-range",
        "meshgate.io/allowlist-source-range",
        "meshgate.io/whitelist-source-range",
    ],
)
def test_every_spelling_of_the_allow_list(key: str) -> None:
    parsed = parse_annotations({key: "10.0.0.1"})
    assert parsed.values.allow == ("10.0.0.1/32",)
    assert parsed.keys == {"allow": key}


def test_same_setting_under_two_names_must_agree() -> None:
    same = parse_annotations(
        {"meshgate.io/ssl-redirect": "false", "nginx.ingress.kubernetes.io/ssl-redirect": "False"}
    )
    assert same.problems == ()
    assert same.values.ssl_redirect is False
    differ = parse_annotations(
        {"meshgate.io/ssl-redirect": "false", "nginx.ingress.kubernetes.io/ssl-redirect": "true"}
    )
    [found] = differ.problems
    assert found.key == "nginx.ingress.kubernetes.io/ssl-redirect"
    assert "contradicts meshgate.io/ssl-redirect" in found.reason


def test_unknown_meshgate_key_is_a_problem_with_a_suggestion() -> None:
    assert problem("meshgate.io/proxy-body-sise", "1m").reason == (
        "unknown annotation; did you mean meshgate.io/proxy-body-size?"
    )
    assert "unknown annotation" in problem("meshgate.io/frobnicate", "x").reason


def test_unknown_nginx_key_is_a_note_and_other_prefixes_are_not_ours() -> None:
    parsed = parse_annotations(
        {
            "nginx.ingress.kubernetes.io/auth-url": "http://auth",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "cert-manager.io/cluster-issuer": "letsencrypt",
        }
    )
    assert parsed.problems == ()
    assert parsed.notes == (
        "annotation nginx.ingress.kubernetes.io/auth-url ignored, not supported by meshgate",
    )


@pytest.mark.parametrize(("value", "hint"), [(True, '"true"'), (60, '"60"')])
def test_values_must_be_strings_as_in_kubernetes(value: object, hint: str) -> None:
    reason = problem("nginx.ingress.kubernetes.io/proxy-read-timeout", value).reason
    assert reason.startswith("annotation values are strings; quote it")
    assert reason.endswith(hint)


def test_every_problem_is_reported_at_once() -> None:
    parsed = parse_annotations(
        {"meshgate.io/use-regex": "yes", "meshgate.io/proxy-body-size": "big"}
    )
    assert [p.key for p in parsed.problems] == [
        "meshgate.io/proxy-body-size",
        "meshgate.io/use-regex",
    ]


def test_the_table_covers_every_supported_annotation() -> None:
    names = {a.name for a in ANNOTATIONS}
    assert names == {
        "rewrite-target",
        "use-regex",
        "ssl-redirect",
        "force-ssl-redirect",
        "backend-protocol",
        "ssl-passthrough",
        "proxy-connect-timeout",
        "proxy-read-timeout",
        "proxy-body-size",
        "whitelist-source-range",
        "app-root",
        "proxy-ssl-name",
        "proxy-ssl-verify",
        "proxy-ssl-secret",
    }
    fields = set(IngressAnnotations.__dataclass_fields__)
    assert {a.field for a in ANNOTATIONS} <= fields
    for spec in ANNOTATIONS:
        assert spec.keys[0] == spec.key == f"meshgate.io/{spec.name}"
        assert f"nginx.ingress.kubernetes.io/{spec.name}" in spec.keys
        assert spec.description.endswith(".")
        assert "|" not in spec.description + spec.value  # would break the table


def test_markdown_table() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| Annotation | ingress-nginx alias | Value | Meaning |"
    assert len(lines) == 2 + len(ANNOTATIONS)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert all(line.count(" | ") == 3 for line in lines[2:])
    row = next(line for line in lines if "whitelist" in line)
    assert row.startswith(
        "| `meshgate.io/whitelist-source-range` (`meshgate.io/allowlist-source-range`) | "
        "`nginx.ingress.kubernetes.io/whitelist-source-range`, "
        "`nginx.ingress.kubernetes.io/allowlist-source-range` |"
    )
