"""Shared-slot limits: MPS daemon and client specs, framework hints, what the form says."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core import mps

GPU = "GPU-5e1c0a2b-9f11-4000-8000-000000000001"


@pytest.mark.parametrize(
    "memory, slots, each, threads",
    [
        pytest.param(81559, 4, (81559 - 1024) // 4, 25, id="h100-4"),
        pytest.param(40960, 3, (40960 - 1024) // 3, 33, id="a100-3: threads add up to 99"),
        pytest.param(24576, 2, 11776, 50, id="l4-2"),
        pytest.param(81559, 64, (81559 - 1024) // 64, 1, id="64 slots: 1% each, not 0"),
    ],
)
def test_slot_limits_split_memory_after_headroom_and_threads(memory, slots, each, threads):
    limits = mps.slot_limits(memory, slots)
    assert (limits.memory_mb, limits.thread_percentage) == (each, threads)
    assert limits.memory_mb * slots <= memory - mps.DEFAULT_HEADROOM_MB
    assert limits.thread_percentage * slots <= 100


@pytest.mark.parametrize(
    "memory, slots, says",
    [
        pytest.param(81559, 1, "not shared", id="one-slot"),
        pytest.param(0, 4, "memory is unknown", id="no-memory"),
        pytest.param(2048, 8, "under 256 MiB", id="too-small"),
    ],
)
def test_slot_limits_refuse_what_cannot_be_split(memory, slots, says):
    with pytest.raises(mps.MPSError, match=says):
        mps.slot_limits(memory, slots)


def test_daemon_spec_runs_the_control_daemon_for_one_gpu_with_the_limits_first():
    limits = mps.slot_limits(40960, 4)
    spec = mps.daemon_spec(GPU, limits, "gpuhub/debian-base:bookworm")
    assert spec.name == "gpuhub-mps-5e1c0a2b9f11" and spec.runtime == "nvidia"
    assert spec.environment["CUDA_VISIBLE_DEVICES"] == GPU == spec.environment["NVIDIA_VISIBLE_DEVICES"]
    assert spec.environment["CUDA_MPS_PIPE_DIRECTORY"] == mps.PIPE_DIR == "/tmp/nvidia-mps"
    assert spec.environment["CUDA_MPS_LOG_DIRECTORY"] == mps.LOG_DIR
    assert "compute" in spec.environment["NVIDIA_DRIVER_CAPABILITIES"]  # the toolkit mounts the MPS binaries
    script = spec.command[-1]
    assert script.startswith("nvidia-cuda-mps-control -f &")
    # the defaults go in before the uid-1000 server starts (they apply to servers started later)
    sent = [c for c in mps.control_commands(limits)]
    assert sent == [f"set_default_device_pinned_mem_limit 0 {limits.memory_mb}M",
                    f"set_default_active_thread_percentage {limits.thread_percentage}",
                    "start_server -uid 1000"]
    positions = [script.index(c) for c in sent]
    assert positions == sorted(positions) and script.rstrip().endswith("wait $daemon")
    targets = {v.target: v for v in spec.volumes}
    assert targets["/dev/shm"].tmpfs and "size=" in targets["/dev/shm"].options
    assert targets[mps.PIPE_DIR].driver_opts()["type"] == "tmpfs"
    assert not targets[mps.LOG_DIR].tmpfs
    assert spec.labels == {mps.LABEL_MPS_GPU: GPU, mps.LABEL_MPS_LIMITS: limits.label()}


def test_client_gets_the_pipe_and_shm_of_its_gpu_but_not_the_logs():
    limits = mps.slot_limits(40960, 4)
    env = mps.client_env(limits)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == mps.PIPE_DIR
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={limits.memory_mb}M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    mounts = {m["Target"]: m["Source"] for m in mps.client_mounts(GPU)}
    spec = mps.daemon_spec(GPU, limits, "x")
    daemon = {v.target: v.name for v in spec.volumes}
    assert mounts == {mps.PIPE_DIR: daemon[mps.PIPE_DIR], "/dev/shm": daemon["/dev/shm"]}
    assert mps.LOG_DIR not in mounts


def test_hints_name_the_slot_share_for_every_framework():
    limits = mps.slot_limits(40960, 4)
    env = mps.hint_env(4, limits)
    assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(limits.memory_mb)
    assert env["CUPY_GPU_MEMORY_LIMIT"] == str(limits.memory_mb * 1024**2)
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(limits.memory_mb / 40960, abs=1e-3)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and env["GPUHUB_GPU_LIMIT"] == "hints"
    unknown = mps.hint_env(4, None)  # memory unknown: a fraction only, never a made-up size
    assert "GPUHUB_GPU_MEMORY_LIMIT_MB" not in unknown and unknown["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    both = mps.shared_env(4, limits, mps=True)
    assert both["GPUHUB_GPU_LIMIT"] == "mps" and "CUDA_MPS_PIPE_DIRECTORY" in both and "CUPY_GPU_MEMORY_LIMIT" in both
    assert "CUDA_MPS_PIPE_DIRECTORY" not in mps.shared_env(4, limits, mps=False)


@pytest.mark.parametrize(
    "state, labels, found",
    [
        pytest.param({"Running": True}, {mps.LABEL_MPS_GPU: GPU, mps.LABEL_MPS_LIMITS: "memory_mb=9984,threads=25"},
                     (9984, 25), id="running"),
        pytest.param({"Running": False}, {mps.LABEL_MPS_GPU: GPU, mps.LABEL_MPS_LIMITS: "memory_mb=9984,threads=25"},
                     None, id="stopped"),
        pytest.param({"Running": True}, {mps.LABEL_MPS_GPU: "GPU-other", mps.LABEL_MPS_LIMITS: "memory_mb=9984,threads=25"},
                     None, id="another-gpu"),
        pytest.param({"Running": True}, {mps.LABEL_MPS_GPU: GPU, mps.LABEL_MPS_LIMITS: "memory_mb=0,threads=25"},
                     None, id="zero-memory"),
        pytest.param({"Running": True}, {mps.LABEL_MPS_GPU: GPU, mps.LABEL_MPS_LIMITS: "threads=250"}, None, id="garbled"),
    ],
)
def test_a_daemon_counts_only_when_it_runs_for_that_gpu_with_sane_limits(state, labels, found):
    limits = mps.daemon_limits({"State": state, "Config": {"Labels": labels}}, GPU, 4)
    assert (None if limits is None else (limits.memory_mb, limits.thread_percentage)) == found


def test_node_labels_round_trip_and_stay_under_the_shared_prefix_setup_rewrites():
    kind = "NVIDIA_SHARED_5E1C0A2B9F11"
    limits = mps.slot_limits(40960, 4)
    labels = mps.node_labels(kind, 40960, limits)
    assert all(k.startswith("org.gpuhub.shared.") for k in labels)  # setup replaces them on each run
    read = mps.read_node_labels(labels, kind, 4)
    assert read.gpu_memory_mb == 40960 and read.mps == limits
    hints_only = mps.read_node_labels(mps.node_labels(kind, 40960, None), kind, 4)
    assert hints_only.gpu_memory_mb == 40960 and hints_only.mps is None
    assert mps.read_node_labels({}, kind, 4) == mps.NodeShared(0, None)


def test_the_form_note_says_enforced_only_under_mps():
    limits = mps.slot_limits(40960, 4)
    assert mps.limit_note("mps", limits).startswith("GPU memory limit enforced by MPS: about 9.8 GiB")
    hint = mps.limit_note("hints", limits)
    assert "not enforced" in hint and "PyTorch" in hint and "9.8 GiB" in hint
    assert mps.limit_note("hints", None) == "GPU memory limit is a hint to PyTorch, TensorFlow, JAX and CuPy, not enforced"
