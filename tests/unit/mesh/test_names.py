"""Which mesh DNS names answer with which addresses."""

from __future__ import annotations

from meshgate.config.rules import rules_to_config
from meshgate.mesh.names import default_zones, parse_hosts, records_for
from meshgate.routing.compile import compile_table


def test_named_listener_on_a_fixed_address_answers_with_it() -> None:
    config = rules_to_config(
        ["tcp:80:web:80"], [], bind="100.100.0.2", dns_name="App.Mesh.Internal"
    )
    records = records_for(compile_table(config, version=1), ())
    assert records is not None
    assert dict(records.names) == {"app.mesh.internal": ("100.100.0.2",)}
    assert records.zones == ("mesh.internal",)


def test_auto_listener_answers_with_every_mesh_address() -> None:
    config = rules_to_config(["tcp:80:web:80"], [], bind="auto", dns_name="app.mesh.internal")
    mesh = ("100.100.0.2", "fd00::2")
    records = records_for(compile_table(config, version=1, mesh_addresses=mesh), mesh)
    assert records is not None
    assert dict(records.names) == {"app.mesh.internal": mesh}


def test_wildcard_bind_answers_with_the_mesh_addresses_and_zones_can_be_given() -> None:
    config = rules_to_config(["tcp:80:web:80"], [], bind="0.0.0.0", dns_name="app.mesh.internal")
    records = records_for(compile_table(config, version=1), ("100.100.0.5",), ("internal",))
    assert records is not None
    assert dict(records.names) == {"app.mesh.internal": ("100.100.0.5",)}
    assert records.zones == ("internal",)


def test_no_names_means_no_dns_and_egress_gets_no_name() -> None:
    assert records_for(compile_table(rules_to_config(["tcp:80:w:80"], []), version=1), ()) is None
    config = rules_to_config([], ["tcp:81:w:80"], dns_name="app.mesh.internal")
    assert config.listeners[0].dns_name is None


def test_default_zone_is_the_parent_domain() -> None:
    assert default_zones(["a.mesh.internal", "b.mesh.internal", "c.other"]) == (
        "mesh.internal",
        "other",
    )
    assert default_zones(["single"]) == ("single",)


def test_hosts_lines_give_names_and_bad_lines_are_named() -> None:
    names, problems = parse_hosts(
        "# the operator's records\n"
        "100.64.0.5 app.mesh.internal API.mesh.internal.\n"
        "fd00::5 app.mesh.internal  # v6 too\n"
        "300.1.1.1 bad.mesh.internal\n"
        "100.64.0.9\n"
    )
    assert names == {
        "app.mesh.internal": ["100.64.0.5", "fd00::5"],
        "api.mesh.internal": ["100.64.0.5"],
    }
    assert problems == [
        "line 4: not an IP address: '300.1.1.1'",
        "line 5: no name after 100.64.0.9",
    ]


def test_extra_names_are_answered_beside_the_tables() -> None:
    config = rules_to_config(["tcp:80:web:80"], [], bind="100.64.0.1", dns_name="web.mesh.internal")
    table = compile_table(config, version=1)
    records = records_for(table, (), extra={"db.mesh.internal": ["100.64.0.7"]})
    assert records is not None
    assert dict(records.names) == {
        "db.mesh.internal": ("100.64.0.7",),
        "web.mesh.internal": ("100.64.0.1",),
    }
    only_extra = records_for(
        compile_table(rules_to_config(["tcp:80:web:80"], []), version=1),
        (),
        extra={"db.mesh.internal": ["100.64.0.7"]},
    )
    assert only_extra is not None
    assert only_extra.zones == ("mesh.internal",)
