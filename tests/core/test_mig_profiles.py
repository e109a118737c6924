"""MIG profile names: recognised, carried through swarm kind names and back, isolation told apart."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core import cluster, mig_profiles
from gpuhub_spawner.core import inventory as inv

GPU = "GPU-5e1c0b7a-0000-4000-8000-000000000001"
MIG = "MIG-00000000-0000-4000-8000-000000000001"

ROUND_TRIP = [
    ("1g.10gb", "NVIDIA_MIG_1G_10GB"),
    ("3g.40gb", "NVIDIA_MIG_3G_40GB"),
    ("1g.10gb+me", "NVIDIA_MIG_1G_10GB_ME"),
    ("1g.10gb-me", "NVIDIA_MIG_1G_10GB_NO_ME"),
    ("1g.23gb+me.all", "NVIDIA_MIG_1G_23GB_ME_ALL"),
    ("1c.3g.40gb", "NVIDIA_MIG_1C_3G_40GB"),
    ("2c.4g.40gb+me", "NVIDIA_MIG_2C_4G_40GB_ME"),
]


@pytest.mark.parametrize("profile, kind", ROUND_TRIP, ids=[p for p, _ in ROUND_TRIP])
def test_profiles_round_trip_through_swarm_kinds(profile, kind):
    assert cluster.mig_kind(profile) == kind
    assert cluster.pool_of_kind(kind) == f"mig-{profile}"
    assert cluster.kind_of_pool(f"mig-{profile}") == kind
    (unit,) = inv.units_from_gpus([{"uuid": GPU, "mig": [{"uuid": MIG, "profile": profile}]}])
    assert cluster.kind_of_unit(unit) == kind


@pytest.mark.parametrize("bad", ["1g.10", "g.10gb", "1g.10gb+", "1g.10gb+ME", "1c.", "3g.40gb-"])
def test_what_is_not_a_profile_is_refused(bad):
    with pytest.raises(inv.InventoryError, match="not a MIG profile name"):
        inv.units_from_gpus([{"uuid": GPU, "mig": [{"uuid": MIG, "profile": bad}]}])


def test_plus_and_minus_me_pools_get_different_profile_slugs():
    units = inv.units_from_gpus(
        [
            {
                "uuid": GPU,
                "mig": [
                    {"uuid": MIG, "profile": "1g.10gb+me"},
                    {"uuid": MIG[:-1] + "2", "profile": "1g.10gb-me"},
                ],
            }
        ]
    )
    slugs = [p.slug for p in inv.default_profiles(inv.Inventory(tuple(units)))]
    assert slugs == ["mig-1g-10gb-me", "mig-1g-10gb-no-me", "cpu"]


@pytest.mark.parametrize(
    "slices, memory_mb, parent_mb, name",
    [
        (3, 40192, 81559, "3g.40gb"),  # H100 80GB: 39.25 GiB is the 40gb profile
        (7, 80384, 81559, "7g.80gb"),
        (1, 9856, 81559, "1g.10gb"),
        (1, 4864, 40536, "1g.5gb"),  # A100 40GB
        (3, 19968, 40536, "3g.20gb"),
        (3, 40192, None, "3g.40gb"),  # parent's memory refused: rounded up
    ],
)
def test_derived_names_round_up_not_down(slices, memory_mb, parent_mb, name):
    assert mig_profiles.derive_profile(slices, memory_mb, parent_mb) == name


def test_compute_instance_prefix_only_where_smaller_than_its_gpu_instance():
    assert mig_profiles.with_compute_prefix("3g.40gb", 3, 1) == "1c.3g.40gb"
    assert mig_profiles.with_compute_prefix("3g.40gb", 3, 3) == "3g.40gb"
    assert mig_profiles.with_compute_prefix("1c.3g.40gb", 3, 1) == "1c.3g.40gb"
