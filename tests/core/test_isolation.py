"""Limits, user network and firewall rules for untrusted user servers (pure parts)."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core import isolation
from gpuhub_spawner.core.isolation import Limits

G = 1024**3
DEFAULTS = Limits(memory=8 * G, cpus=2.0, pids=2048)


@pytest.mark.parametrize(
    "profile_mem, profile_cpu, quota_mem, quota_cpu, expected",
    [
        pytest.param(None, None, None, None, Limits(8 * G, 2.0, 2048), id="nothing-set-defaults"),
        pytest.param(32 * G, 8.0, None, None, Limits(32 * G, 8.0, 2048), id="profile-raises"),
        pytest.param(None, None, G, 0.5, Limits(G, 0.5, 2048), id="quota-lowers"),
        pytest.param(16 * G, 4.0, 4 * G, 6.0, Limits(4 * G, 4.0, 2048), id="stricter-of-both"),
        pytest.param(16 * G, None, None, 1.0, Limits(16 * G, 1.0, 2048), id="one-each"),
        pytest.param(0, 0.0, None, None, Limits(8 * G, 2.0, 2048), id="zero-is-unset"),
    ],
)
def test_limits_profile_or_quota_win_else_default(profile_mem, profile_cpu, quota_mem, quota_cpu, expected):
    assert isolation.resolve_limits(profile_mem, profile_cpu, quota_mem, quota_cpu, DEFAULTS) == expected


@pytest.mark.parametrize(
    "host_config, expected",
    [
        pytest.param({}, {"Memory": 8 * G, "MemorySwap": 8 * G, "CpuPeriod": 100_000, "CpuQuota": 200_000,
                          "PidsLimit": 2048}, id="empty"),
        pytest.param({"Memory": G}, {"MemorySwap": G, "CpuPeriod": 100_000, "CpuQuota": 200_000,
                                     "PidsLimit": 2048}, id="operator-memory-kept-no-swap-beyond"),
        pytest.param({"Memory": 0, "MemorySwap": 0, "CpuQuota": 0, "PidsLimit": 0},
                     {"Memory": 8 * G, "MemorySwap": 8 * G, "CpuPeriod": 100_000, "CpuQuota": 200_000,
                      "PidsLimit": 2048}, id="zero-means-unlimited-so-default"),
        pytest.param({"PidsLimit": -1}, {"Memory": 8 * G, "MemorySwap": 8 * G, "CpuPeriod": 100_000,
                                         "CpuQuota": 200_000, "PidsLimit": 2048}, id="minus-one-pids"),
        pytest.param({"Memory": G, "MemorySwap": 2 * G, "NanoCpus": 10**9, "PidsLimit": 100}, {},
                     id="all-set-by-operator"),
    ],
)
def test_container_limits_fill_only_what_is_unset(host_config, expected):
    assert isolation.container_limits(host_config, DEFAULTS) == expected


def test_service_limits_for_swarm():
    assert isolation.service_limits({}, Limits(G, 1.5, 512)) == {
        "MemoryBytes": G, "NanoCPUs": 1_500_000_000, "Pids": 512
    }
    assert isolation.service_limits({"MemoryBytes": 2 * G}, Limits(G, 1.5, 512)) == {
        "NanoCPUs": 1_500_000_000, "Pids": 512
    }


@pytest.mark.parametrize(
    "value, expected",
    [("8G", 8 * G), ("512m", 512 * 1024**2), (" 1T ", 1024**4), (64 * 1024**2, 64 * 1024**2),
     ("4Gi", 4 * G), ("1.5G", 3 * G // 2), ("4GB", 4 * G)],
)
def test_parse_memory(value, expected):
    assert isolation.parse_memory(value) == expected


@pytest.mark.parametrize("value", ["unlimited", "", "-1G", 0, 1024, True, None, "2K", "100T", "four"])
def test_parse_memory_refuses(value):
    with pytest.raises(ValueError):
        isolation.parse_memory(value)


# ---- network -------------------------------------------------------------------------


def test_network_spec_turns_container_to_container_traffic_off():
    spec = isolation.network_spec("gpuhub-users")
    assert spec["driver"] == "bridge"
    assert spec["options"] == {
        "com.docker.network.bridge.enable_icc": "false",
        "com.docker.network.bridge.name": "gpuhub-users",
    }
    assert spec["labels"] == {"org.gpuhub.network": "users"}
    assert spec["check_duplicate"] is True


@pytest.mark.parametrize(
    "name, interface",
    [("gpuhub-users", "gpuhub-users"), ("gpuhub-t-0123abcd", None), ("a.b_c-15-chars!", None)],
)
def test_bridge_interface_fits_linux_names(name, interface):
    got = isolation.bridge_interface(name)
    assert len(got) <= 15
    if interface:
        assert got == interface
    else:
        assert got.startswith("gh-") and got == isolation.bridge_interface(name)


GOOD = {
    "Id": "f" * 64,
    "Driver": "bridge",
    "Options": {"com.docker.network.bridge.enable_icc": "false", "com.docker.network.bridge.name": "gpuhub-users"},
    "IPAM": {"Config": [{"Subnet": "172.19.0.0/16", "Gateway": "172.19.0.1"}]},
}


@pytest.mark.parametrize(
    "attrs, problem",
    [
        pytest.param(GOOD, None, id="ours"),
        pytest.param({**GOOD, "Options": {}}, "lets containers connect to each other", id="icc-default-on"),
        pytest.param({**GOOD, "Options": {"com.docker.network.bridge.enable_icc": "true"}},
                     "lets containers connect to each other", id="icc-on"),
        pytest.param({**GOOD, "Driver": "overlay"}, "is not a bridge network", id="overlay"),
        pytest.param({**GOOD, "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}, "no IPv4 gateway", id="v6-only"),
    ],
)
def test_existing_network_is_checked(attrs, problem):
    found = isolation.network_problem("gpuhub-users", attrs)
    if problem is None:
        assert found is None
    else:
        assert problem in found and "docker network rm gpuhub-users" in found


def test_gateway_and_interface_of_a_network():
    assert isolation.network_gateway(GOOD) == "172.19.0.1"
    assert isolation.network_gateway({"IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}}) == "10.9.0.1"
    assert isolation.network_interface(GOOD) == "gpuhub-users"
    assert isolation.network_interface({"Id": "0123456789abcdef", "Options": {}}) == "br-0123456789ab"


@pytest.mark.parametrize("name", ["bridge", "host", "none", "", "-x", "a b"])
def test_unusable_network_names(name):
    assert "GPUHUB_USER_NETWORK" in isolation.network_name_problem(name)


# ---- firewall ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "network, chain",
    [("gpuhub-users", "GPUHUB-USERS"), ("course.a", "GPUHUB-COURSE-A"), ("x" * 40, None)],
)
def test_chain_names(network, chain):
    got = isolation.chain_name(network)
    assert len(got) <= 28 and got.startswith("GPUHUB-")
    if chain:
        assert got == chain


def _lines(chain, *specs):
    """`iptables -S CHAIN` output for rules given as argument lists."""
    out = [f"-N {chain}"]
    for spec in specs:
        out.append(" ".join([f"-A {chain}", *spec]))
    return out


NOW = 1_800_000_000.0


def test_new_chain_gets_replies_hub_port_and_deny_in_that_order():
    commands = isolation.plan_chain("GPUHUB-USERS", [], "172.19.0.1", 8081, set(), NOW)
    rules = _apply([], commands)
    assert [_kind(r) for r in rules] == ["established", "hub", "deny"]
    hub = rules[1]
    assert "-d 172.19.0.1/32 -p tcp -m tcp --dport 8081" in hub
    assert rules[2].endswith("-j REJECT")


def test_rerun_is_idempotent_and_keeps_other_hubs():
    chain = "GPUHUB-USERS"
    first = _apply([], isolation.plan_chain(chain, [], "172.19.0.1", 8081, set(), NOW))
    existing = isolation.parse_chain(_lines(chain, *[r.split() for r in first]), chain)
    # another hub on the same network (port 9000) adds its rule; then ours restarts
    second = _apply(first, isolation.plan_chain(chain, existing, "172.19.0.1", 9000, {8081}, NOW + 5))
    existing = isolation.parse_chain(_lines(chain, *[r.split() for r in second]), chain)
    third = _apply(second, isolation.plan_chain(chain, existing, "172.19.0.1", 8081, {9000}, NOW + 10))
    kinds = [_kind(r) for r in third]
    assert kinds.count("deny") == 1 and kinds[-1] == "deny" and kinds.count("established") == 1
    ports = sorted(p.port for p in isolation.parse_chain(_lines(chain, *[r.split() for r in third]), chain)
                   if p.kind == "hub")
    assert ports == [8081, 9000]


def test_rules_of_gone_hubs_are_pruned_after_a_grace_period():
    chain = "GPUHUB-USERS"
    old = NOW - isolation.STALE_AFTER - 1
    existing = isolation.parse_chain(
        _lines(
            chain,
            isolation.established_rule(),
            isolation.hub_rule("172.19.0.1", 7001, old),  # gone: nothing listens, old
            isolation.hub_rule("172.19.0.1", 7002, old),  # still listening: kept
            isolation.hub_rule("172.19.0.1", 7003, NOW - 5),  # just added by a hub starting: kept
            isolation.deny_rule(),
            isolation.deny_rule(),  # a duplicate from a past race: removed
        ),
        chain,
    )
    commands = isolation.plan_chain(chain, existing, "172.19.0.1", 8081, {7002}, NOW)
    deleted = [c for c in commands if c[0] == "-D"]
    assert any("7001" in c for c in deleted)
    assert not any("7002" in c or "7003" in c for c in deleted)
    assert sum(1 for c in deleted if isolation.COMMENT_DENY in c) == 1
    assert not any(c[0] == "-A" for c in commands)  # a deny rule is there already


@pytest.mark.parametrize("address", ["0.0.0.0", "", "hub.example.org", "::"])
def test_hub_on_every_address_is_allowed_by_port_only(address):
    rule = isolation.hub_rule(address, 8081, NOW)
    assert "-d" not in rule and rule[rule.index("--dport") + 1] == "8081"


def test_quoted_comments_parse():
    line = '-A GPUHUB-USERS -m comment --comment "gpuhub-replies" -j ACCEPT'
    assert isolation.parse_chain([line], "GPUHUB-USERS")[0].kind == "established"
    assert isolation.parse_chain(["-A OTHER -j DROP"], "GPUHUB-USERS") == []


def _kind(rule: str) -> str:
    return isolation.parse_chain([f"-A C {rule}"], "C")[0].kind


def _apply(rules: list[str], commands: list[list[str]]) -> list[str]:
    """A tiny model of iptables -I/-A/-D on one chain (rules as their spec strings)."""
    rules = list(rules)
    for command in commands:
        op, spec = command[0], command[2:]
        if op == "-I":
            rules.insert(int(spec[0]) - 1, " ".join(spec[1:]))
        elif op == "-A":
            rules.append(" ".join(spec))
        elif op == "-D":
            rules.remove(" ".join(spec))
    return rules
