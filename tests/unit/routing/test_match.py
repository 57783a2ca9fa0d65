"""select_sni: Ingress host semantics over the indexes compile_table builds."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshgate.config.model import Config
from meshgate.routing.compile import compile_table
from meshgate.routing.match import select_sni
from meshgate.routing.table import SniRoutes

BACKENDS = ("exact", "wild", "fallback", "second")


def _route(backend: str, *sni: str, default: bool = False) -> dict[str, Any]:
    return {"sni": list(sni), "default": default, "backend": backend}


def _routes(*routes: dict[str, Any]) -> SniRoutes:
    """One tls listener with `routes`, compiled: the indexes are compile's, not ours."""
    config = Config.model_validate(
        {
            "listeners": [{"name": "t", "port": 443, "protocol": "tls", "routes": list(routes)}],
            "backends": [{"name": name, "endpoints": ["10.0.0.1:443"]} for name in BACKENDS],
        }
    )
    sni = compile_table(config, version=1).listeners[0].sni
    assert sni is not None
    return sni


def _backend(routes: SniRoutes, sni: str | None) -> str | None:
    route = select_sni(routes, sni)
    return None if route is None else route.pool.name


ROUTES = _routes(
    _route("exact", "foo.com", "www.foo.com"),
    _route("wild", "*.foo.com"),
    _route("fallback", default=True),
)


def test_exact_name() -> None:
    assert _backend(ROUTES, "foo.com") == "exact"


def test_wildcard_covers_exactly_one_more_label() -> None:
    assert _backend(ROUTES, "bar.foo.com") == "wild"
    assert _backend(ROUTES, "baz.bar.foo.com") == "fallback"
    assert _backend(ROUTES, "xfoo.com") == "fallback"


def test_wildcard_does_not_cover_its_own_suffix() -> None:
    routes = _routes(_route("wild", "*.foo.com"), _route("fallback", default=True))
    assert _backend(routes, "foo.com") == "fallback"


def test_exact_beats_wildcard() -> None:
    assert _backend(ROUTES, "www.foo.com") == "exact"


def test_exact_beats_wildcard_whatever_the_route_order() -> None:
    routes = _routes(_route("wild", "*.foo.com"), _route("exact", "www.foo.com"))
    assert _backend(routes, "www.foo.com") == "exact"
    assert _backend(routes, "api.foo.com") == "wild"


def test_names_compare_case_insensitively() -> None:
    assert _backend(ROUTES, "FOO.com") == "exact"
    assert _backend(ROUTES, "Bar.FOO.COM") == "wild"
    routes = _routes(_route("exact", "API.Example.COM"))  # the config side is folded too
    assert _backend(routes, "api.example.com") == "exact"


def test_trailing_dot_is_ignored() -> None:
    assert _backend(ROUTES, "foo.com.") == "exact"
    assert _backend(ROUTES, "bar.foo.com.") == "wild"
    routes = _routes(_route("exact", "foo.com."), _route("wild", "*.bar.com."))
    assert _backend(routes, "foo.com") == "exact"
    assert _backend(routes, "x.bar.com") == "wild"


def test_no_sni_goes_to_the_default() -> None:
    assert _backend(ROUTES, None) == "fallback"
    assert _backend(ROUTES, "") == "fallback"


def test_unknown_name_goes_to_the_default() -> None:
    assert _backend(ROUTES, "other.org") == "fallback"


def test_without_a_default_nothing_takes_an_unknown_or_missing_name() -> None:
    routes = _routes(_route("exact", "foo.com"), _route("wild", "*.foo.com"))
    assert select_sni(routes, "other.org") is None
    assert select_sni(routes, "a.b.foo.com") is None
    assert select_sni(routes, None) is None


def test_a_default_route_may_also_name_servers() -> None:
    routes = _routes(_route("exact", "foo.com"), _route("fallback", "bar.com", default=True))
    assert _backend(routes, "bar.com") == "fallback"
    assert _backend(routes, "foo.com") == "exact"
    assert _backend(routes, None) == "fallback"


def test_first_route_naming_a_server_wins() -> None:
    routes = _routes(
        _route("exact", "foo.com", "*.foo.com"),
        _route("second", "FOO.com.", "*.foo.com", "only.second.com"),
    )
    assert _backend(routes, "foo.com") == "exact"
    assert _backend(routes, "x.foo.com") == "exact"
    assert _backend(routes, "only.second.com") == "second"


# A label as check_server_name accepts it (lower case here; case is varied below).
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
LABELS = st.lists(LABEL, min_size=1, max_size=4)


@st.composite
def wildcard_and_name(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A wildcard suffix and a name that often, but not always, shares it."""
    # Names end in a label with a letter: an all-digit last label is an IP
    # address, which is not a server name.
    suffix = [*draw(LABELS), "test"]
    # Random tails rarely equal the suffix, so make it the tail most of the time.
    tail = draw(
        st.one_of(st.just(suffix), LABELS.map(lambda ls: [*ls, "test"]), st.just(suffix[1:]))
    )
    head = draw(st.lists(LABEL, max_size=3))
    return suffix, head + tail


@given(wildcard_and_name(), st.booleans(), st.booleans())
def test_wildcard_matches_iff_exactly_one_more_label_with_the_same_suffix(
    case: tuple[list[str], list[str]], upper: bool, trailing_dot: bool
) -> None:
    suffix, labels = case
    routes = _routes(_route("wild", "*." + ".".join(suffix)))
    name = ".".join(labels)
    if upper:
        name = name.upper()
    if trailing_dot:
        name += "."
    expected = len(labels) == len(suffix) + 1 and labels[1:] == suffix
    assert (select_sni(routes, name) is not None) is expected
