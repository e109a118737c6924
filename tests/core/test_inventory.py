"""Units, pools and profiles built from GPU descriptions (pure tables)."""

from __future__ import annotations

from typing import Any

import pytest

from gpuhub_spawner.core import inventory as inv
from gpuhub_spawner.core.inventory import Inventory, InventoryError, Unit

G0 = "GPU-00000000-1111-2222-3333-000000000000"
G1 = "GPU-00000000-1111-2222-3333-000000000001"
G2 = "GPU-00000000-1111-2222-3333-000000000002"
M0 = "MIG-00000000-1111-2222-3333-000000000010"
M1 = "MIG-00000000-1111-2222-3333-000000000011"
M2 = "MIG-00000000-1111-2222-3333-000000000012"


def mig_gpu(uuid: str, *instances: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "mig": [{"uuid": u, "profile": p} for u, p in instances], **extra}


# ---- units_from_gpus ------------------------------------------------------------------

UNIT_CASES = [
    pytest.param(
        [{"uuid": G0, "name": "NVIDIA L40S", "memory_mb": 46068}],
        1,
        [Unit(G0, "gpu", "gpu", G0, G0, memory_mb=46068, gpu_name="NVIDIA L40S")],
        id="whole-gpu",
    ),
    pytest.param(
        [{"uuid": G0, "memory_mb": 24000, "replicas": 3}],
        1,
        [
            Unit(f"{G0}/slot-{k}", "replica", "shared", G0, G0, memory_mb=8000, slot=k, slots=3)
            for k in range(3)
        ],
        id="replicas-per-gpu",
    ),
    pytest.param(
        [{"uuid": G0}],
        2,
        [Unit(f"{G0}/slot-{k}", "replica", "shared", G0, G0, slot=k, slots=2) for k in range(2)],
        id="replicas-by-default-no-memory",
    ),
    pytest.param(
        [{"uuid": G0, "replicas": 1}],
        4,
        [Unit(G0, "gpu", "gpu", G0, G0)],
        id="replicas-1-overrides-default",
    ),
    pytest.param(
        [
            {
                "uuid": G0,
                "name": "H100",
                "mig": [
                    {"uuid": M0, "profile": "1g.10gb", "memory_mb": 9856},
                    {"uuid": M1, "profile": "3g.40gb"},
                ],
            }
        ],
        4,
        [
            Unit(M0, "mig", "mig-1g.10gb", M0, G0, memory_mb=9856, mig_profile="1g.10gb", gpu_name="H100"),
            Unit(M1, "mig", "mig-3g.40gb", M1, G0, mig_profile="3g.40gb", gpu_name="H100"),
        ],
        id="mig-ignores-default-replicas",
    ),
    pytest.param(
        [
            mig_gpu(G0, (M0, "1c.2g.20gb"), replicas=1),
            {"uuid": G1, "node": "node-b"},
            {"uuid": G2, "replicas": 2, "index": 2},
        ],
        1,
        [
            Unit(M0, "mig", "mig-1c.2g.20gb", M0, G0, mig_profile="1c.2g.20gb"),
            Unit(G1, "gpu", "gpu", G1, G1, node="node-b"),
            Unit(f"{G2}/slot-0", "replica", "shared", G2, G2, slot=0, slots=2),
            Unit(f"{G2}/slot-1", "replica", "shared", G2, G2, slot=1, slots=2),
        ],
        id="mixed",
    ),
    pytest.param([], 1, [], id="empty"),
]


@pytest.mark.parametrize("gpus, default_replicas, expected", UNIT_CASES)
def test_units_from_gpus(gpus, default_replicas, expected):
    assert inv.units_from_gpus(gpus, default_replicas) == expected


def test_node_argument_is_default_for_every_gpu():
    units = inv.units_from_gpus([{"uuid": G0}, {"uuid": G1, "node": "b"}], node="a")
    assert [u.node for u in units] == ["a", "b"]


def test_replica_slots_share_the_device_but_not_the_id():
    units = inv.units_from_gpus([{"uuid": G0, "replicas": 4}])
    assert {u.device_id for u in units} == {G0}
    assert len({u.id for u in units}) == 4
    assert all(u.shared for u in units)
    assert [u.describe() for u in units][-1] == "shared GPU slot 4/4"


@pytest.mark.parametrize(
    "unit, text",
    [
        (Unit(G0, "gpu", "gpu", G0, G0), "whole GPU"),
        (Unit(M0, "mig", "mig-1g.10gb", M0, G0, mig_profile="1g.10gb"), "MIG 1g.10gb"),
        (Unit(f"{G0}/slot-1", "replica", "shared", G0, G0, slot=1, slots=4), "shared GPU slot 2/4"),
    ],
    ids=["gpu", "mig", "replica"],
)
def test_describe(unit, text):
    assert unit.describe() == text


@pytest.mark.parametrize(
    "pool, label",
    [("gpu", "whole GPU"), ("shared", "shared GPU slot"), ("mig-2g.20gb", "MIG 2g.20gb"), ("x", "x")],
    ids=["gpu", "shared", "mig", "other"],
)
def test_pool_label(pool, label):
    assert inv.pool_label(pool) == label


# ---- every InventoryError ---------------------------------------------------------------

ERROR_CASES = [
    pytest.param({"uuid": G0}, "gpu_inventory", "must be a list of GPUs", "JSON list", id="not-a-list"),
    pytest.param([G0, G1], "gpu_inventory[0]", "must be a mapping", '{"uuid": "GPU-...', id="string-entry"),
    pytest.param(
        [{"uuid": G0}, {"uuid": "0"}],
        "gpu_inventory[1]",
        "'0' is not a GPU UUID",
        "nvidia-smi -L",
        id="index-as-uuid",
    ),
    pytest.param(
        [{"uuid": "GPU0"}],
        "gpu_inventory[0]",
        "'GPU0' is not a GPU UUID",
        "indices are not accepted",
        id="gpu0",
    ),
    pytest.param(
        [{"uuid": M0}], "gpu_inventory[0]", "is not a GPU UUID", "starting with 'GPU-'", id="mig-as-gpu"
    ),
    pytest.param(
        [{"uuid": G0}, {"index": 1}],
        "gpu_inventory[1]",
        "missing 'uuid'",
        "Give every entry a 'uuid'",
        id="index-only",
    ),
    pytest.param(
        [{"uuid": 7}], "gpu_inventory[0]", "'uuid' must be a str", "Write 'uuid' as a str", id="uuid-not-str"
    ),
    pytest.param(
        [{"uuid": G0, "replica": 2}],
        "gpu_inventory[0]",
        "unknown key(s) replica",
        "Allowed keys:",
        id="unknown-key",
    ),
    pytest.param(
        [{"uuid": G0, "replicas": 0}],
        "gpu_inventory[0]",
        "'replicas' must be a whole number ≥ 1",
        "Set 'replicas'",
        id="replicas-0",
    ),
    pytest.param(
        [{"uuid": G0, "replicas": True}],
        "gpu_inventory[0]",
        "'replicas' must be a whole number",
        "Set 'replicas'",
        id="replicas-bool",
    ),
    pytest.param(
        [{"uuid": G0, "replicas": "4"}], "gpu_inventory[0]", "not '4'", "Set 'replicas'", id="replicas-str"
    ),
    pytest.param(
        [{"uuid": G0, "memory_mb": -1}],
        "gpu_inventory[0]",
        "'memory_mb' must be a whole number ≥ 0",
        "Set 'memory_mb'",
        id="memory-negative",
    ),
    pytest.param(
        [mig_gpu(G0, (M0, "1g.10gb"), replicas=2)],
        "gpu_inventory[0]",
        "cannot also be time-sliced",
        "Remove 'replicas'",
        id="replicas-with-mig",
    ),
    pytest.param(
        [{"uuid": G0, "mig": {"uuid": M0}}],
        "gpu_inventory[0]",
        "'mig' must be a list",
        "list of instances",
        id="mig-not-list",
    ),
    pytest.param(
        [{"uuid": G0, "mig": [M0]}],
        "gpu_inventory[0].mig[0]",
        "must be a mapping",
        "Give uuid and profile",
        id="mig-entry-string",
    ),
    pytest.param(
        [mig_gpu(G0, (M0, "1g.10gb"), (G1, "1g.10gb"))],
        "gpu_inventory[0].mig[1]",
        "is not a MIG UUID",
        "starting with 'MIG-'",
        id="gpu-uuid-as-mig",
    ),
    pytest.param(
        [mig_gpu(G0, (M0, "1g.10GB"))],
        "gpu_inventory[0].mig[0]",
        "'1g.10GB' is not a MIG profile name",
        "such as '1g.10gb'",
        id="bad-mig-profile",
    ),
    pytest.param(
        [mig_gpu(G0, (M0, "mig-1g.10gb"))],
        "gpu_inventory[0].mig[0]",
        "is not a MIG profile name",
        "such as '1g.10gb'",
        id="pool-name-as-profile",
    ),
    pytest.param(
        [{"uuid": G0, "mig": [{"uuid": M0}]}],
        "gpu_inventory[0].mig[0]",
        "missing 'profile'",
        "Give every entry a 'profile'",
        id="mig-without-profile",
    ),
]


@pytest.mark.parametrize("gpus, setting, problem, fix", ERROR_CASES)
def test_inventory_errors_name_the_setting_and_the_fix(gpus, setting, problem, fix):
    with pytest.raises(InventoryError) as info:
        inv.units_from_gpus(gpus)
    err = info.value
    assert err.setting == setting
    assert str(err).startswith(f"{setting}: ")
    assert problem in err.problem
    assert fix in err.fix
    assert err.fix in str(err)


@pytest.mark.parametrize(
    "gpus",
    [
        pytest.param([{"uuid": G0}, {"uuid": G0}], id="same-gpu-twice"),
        pytest.param([mig_gpu(G0, (M0, "1g.10gb")), mig_gpu(G1, (M0, "1g.10gb"))], id="same-mig-twice"),
    ],
)
def test_duplicate_uuid(gpus):
    units = inv.units_from_gpus(gpus)
    with pytest.raises(InventoryError, match=r"^gpu_inventory: unit .* is listed twice\. List each"):
        Inventory(tuple(units))


def test_setting_name_is_configurable():
    with pytest.raises(InventoryError, match=r"^nodes\.a\[0\]: "):
        inv.units_from_gpus([{"uuid": "x"}], setting="nodes.a")


# ---- Inventory, spread_order ------------------------------------------------------------


def test_inventory_indexes_pools():
    units = inv.units_from_gpus([mig_gpu(G0, (M0, "1g.10gb"), (M1, "1g.10gb")), {"uuid": G1}, {"uuid": G2}])
    inventory = Inventory(tuple(units))
    assert inventory.pool_names() == ["gpu", "mig-1g.10gb"]
    assert inventory.pool_size("gpu") == 2
    assert inventory.pool_size("mig-1g.10gb") == 2
    assert inventory.pool_size("shared") == 0
    assert inventory.by_id[M1].gpu_uuid == G0


def test_spread_order_takes_one_slot_of_every_gpu_first():
    units = inv.units_from_gpus(
        [{"uuid": G0, "replicas": 3}, {"uuid": G1, "replicas": 2}, {"uuid": G2, "replicas": 1}]
    )
    ordered = inv.spread_order(units)
    assert [(u.gpu_uuid, u.slot) for u in ordered] == [
        (G0, 0), (G1, 0), (G2, 0),
        (G0, 1), (G1, 1),
        (G0, 2),
    ]  # fmt: skip
    assert sorted(u.id for u in ordered) == sorted(u.id for u in units)


def test_spread_order_spreads_mig_instances_and_nodes():
    units = [
        *inv.units_from_gpus([mig_gpu(G0, (M0, "1g.10gb"), (M1, "1g.10gb"))], node="b"),
        *inv.units_from_gpus([mig_gpu(G1, (M2, "1g.10gb"))], node="a"),
    ]
    assert [u.id for u in inv.spread_order(units)] == [M2, M0, M1]


# ---- profiles ------------------------------------------------------------------------------


def test_default_profiles_one_per_pool_then_cpu():
    units = inv.units_from_gpus(
        [
            {"uuid": G0, "mig": [{"uuid": M0, "profile": "1g.10gb", "memory_mb": 9856}]},
            {"uuid": G1, "replicas": 2, "memory_mb": 49152},
            {"uuid": G2},
        ]
    )
    profiles = inv.default_profiles(Inventory(tuple(units)))
    assert [(p.slug, p.pool, p.default) for p in profiles] == [
        ("gpu", "gpu", True),
        ("mig-1g-10gb", "mig-1g.10gb", False),
        ("shared", "shared", False),
        ("cpu", None, False),
    ]
    assert [p.display_name for p in profiles] == ["whole GPU", "MIG 1g.10gb", "shared GPU slot", "CPU only"]
    assert "NOT isolated" in profiles[2].description
    assert "About 24 GB" in profiles[2].description
    assert "About 10 GB" in profiles[1].description
    assert "GB" not in profiles[0].description  # memory unknown
    assert profiles[-1].cpu_only and not profiles[0].cpu_only


def test_default_profiles_without_gpus_is_cpu_only_default():
    profiles = inv.default_profiles(Inventory(()))
    assert [(p.slug, p.default, p.cpu_only) for p in profiles] == [("cpu", True, True)]
    assert inv.CPU_PROFILE.default is False  # the shared constant is not modified


@pytest.fixture
def inventory() -> Inventory:
    return Inventory(tuple(inv.units_from_gpus([mig_gpu(G0, (M0, "1g.10gb")), {"uuid": G1}])))


def test_profiles_from_config(inventory):
    profiles = inv.profiles_from_config(
        [
            {
                "slug": "small",
                "display_name": "Small",
                "pool": "mig-1g.10gb",
                "mem_limit": "8G",
                "cpu_limit": 2,
            },
            {"slug": "big", "pool": "gpu", "default": True},
            {"slug": "cpu", "pool": None, "description": "No GPU"},
        ],
        inventory,
    )
    assert [(p.slug, p.display_name, p.pool, p.default) for p in profiles] == [
        ("small", "Small", "mig-1g.10gb", False),
        ("big", "big", "gpu", True),
        ("cpu", "cpu", None, False),
    ]
    assert profiles[0].cpu_limit == 2.0 and profiles[0].mem_limit == "8G"
    assert profiles[2].cpu_only


def test_profiles_from_config_first_is_default_when_none_is(inventory):
    profiles = inv.profiles_from_config([{"slug": "a", "pool": "gpu"}, {"slug": "b"}], inventory)
    assert [p.default for p in profiles] == [True, False]


def test_empty_profiles_config_means_defaults(inventory):
    assert inv.profiles_from_config([], inventory) == inv.default_profiles(inventory)


@pytest.mark.parametrize(
    "entries, setting, problem, fix",
    [
        pytest.param(
            [{"slug": "a", "pool": "shared"}],
            "gpu_profiles[0]",
            "pool 'shared' has no GPU units on this hub (pools: gpu, mig-1g.10gb)",
            "existing pool",
            id="unknown-pool",
        ),
        pytest.param(
            [{"slug": "a"}, {"slug": "a"}],
            "gpu_profiles[1]",
            "slug 'a' is invalid or repeated",
            "unique lowercase slug",
            id="repeated-slug",
        ),
        pytest.param(
            [{"slug": "Big GPU"}],
            "gpu_profiles[0]",
            "invalid or repeated",
            "unique lowercase slug",
            id="bad-slug",
        ),
        pytest.param(
            [{"slug": "a", "gpus": 1}],
            "gpu_profiles[0]",
            "unknown key(s) gpus",
            "Allowed: cpu_limit",
            id="unknown-key",
        ),
        pytest.param(
            [{"pool": "gpu"}], "gpu_profiles[0]", "missing 'slug'", "Give every entry a 'slug'", id="no-slug"
        ),
        pytest.param(["gpu"], "gpu_profiles[0]", "must be a mapping", '"slug"', id="string-entry"),
    ],
)
def test_profiles_from_config_errors(inventory, entries, setting, problem, fix):
    with pytest.raises(InventoryError) as info:
        inv.profiles_from_config(entries, inventory)
    assert info.value.setting == setting
    assert problem in info.value.problem
    assert fix in info.value.fix


def test_unknown_pool_without_gpus_says_none():
    with pytest.raises(InventoryError, match=r"\(pools: none\)"):
        inv.profiles_from_config([{"slug": "a", "pool": "gpu"}], Inventory(()))
