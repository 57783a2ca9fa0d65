"""Which mesh DNS names answer with which addresses."""

from __future__ import annotations

from meshgate.config.rules import rules_to_config
from meshgate.mesh.names import default_zones, records_for
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
