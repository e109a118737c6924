"""Every ``/proc/<pid>/cgroup`` form Docker produces, as the agent reads it from the host's
namespace or from a private cgroup namespace, and the agent's check that it sees host PIDs
(a /proc tree written in a temporary directory; the real engine's in test_agent_install.py)."""

from __future__ import annotations

import pytest

from gpuhub_spawner.node.cgroup import ProcReader, container_id_from_cgroup, pid_view, pid_view_from

A = "a" * 64
B = "0123456789abcdef" * 4
OUTER = "f" * 64
V1_CONTROLLERS = ("12:memory", "11:pids", "4:cpu,cpuacct", "1:name=systemd")


def v1(path: str) -> str:
    return "".join(f"{c}:{path}\n" for c in V1_CONTROLLERS) + "0::/\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        # cgroup v2, cgroupfs driver, private cgroup namespace (Docker's default on v2): a
        # container's process read by an agent in another container's namespace, and by itself
        pytest.param(f"0::/../{B}\n", B, id="v2-cgroupfs-private-ns-sibling"),
        pytest.param(f"0::/../{B}/init.scope\n", B, id="v2-cgroupfs-private-ns-sub-cgroup"),
        pytest.param("0::/\n", None, id="v2-private-ns-own-root"),
        pytest.param("0::/../../init.scope\n", None, id="v2-private-ns-host-process"),
        pytest.param("0::/../../system.slice/containerd.service\n", None, id="v2-private-ns-host-service"),
        # cgroup v2, systemd driver
        pytest.param(f"0::/system.slice/docker-{A}.scope\n", A, id="v2-systemd-host-ns"),
        pytest.param(f"0::/../docker-{A}.scope\n", A, id="v2-systemd-private-ns"),
        pytest.param(f"0::/gpuhub.slice/docker-{A}.scope\n", A, id="v2-systemd-cgroup-parent"),
        # cgroup v2, cgroupfs driver, host namespace, and a --cgroup-parent
        pytest.param(f"0::/docker/{A}\n", A, id="v2-cgroupfs-host-ns"),
        pytest.param(f"0::/gpuhub/{A}\n", A, id="v2-cgroupfs-cgroup-parent"),
        # cgroup v1 (hybrid: an empty unified line as well)
        pytest.param(v1(f"/docker/{A}"), A, id="v1-cgroupfs"),
        pytest.param(v1(f"/system.slice/docker-{A}.scope"), A, id="v1-systemd"),
        pytest.param(v1(f"/../{B}"), B, id="v1-cgroupfs-private-ns"),
        pytest.param(v1("/"), None, id="v1-host-process"),
        pytest.param(v1(f"/docker/{OUTER}/docker/{B}"), B, id="v1-docker-in-docker"),
        # not containers
        pytest.param("0::/user.slice/user-1000.slice/session-2.scope\n", None, id="user-session"),
        pytest.param(f"0::/../{A[:63]}\n", None, id="private-ns-short-id"),
        pytest.param(f"0::/../{A.upper()}\n", None, id="private-ns-upper-case-is-not-an-id"),
        pytest.param("0::/../docker.service\n", None, id="private-ns-dockerd"),
    ],
)
def test_container_id_from_cgroup_forms(text, expected):
    assert container_id_from_cgroup(text) == expected


def write_status(root, entry: str, text: str) -> None:
    (root / entry).mkdir(parents=True, exist_ok=True)
    (root / entry / "status").write_text(text)


KTHREADD = "Name:\tkthreadd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t2\nPid:\t2\nPPid:\t0\nNSpid:\t2\n"
A_CONTAINER_INIT = "Name:\tgpuhub-node-age\nTgid:\t2\nPid:\t2\nPPid:\t1\nNSpid:\t2\n"


def status_of(nspid: str) -> str:
    return f"Name:\tgpuhub-node-age\nPid:\t{nspid.split()[0]}\nPPid:\t1\nNSpid:\t{nspid}\n"


def write_comm(root, pid: int, name: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "comm").write_text(name + "\n")


@pytest.mark.parametrize(
    "pid2, self_status, engine, host, why",
    [
        pytest.param(KTHREADD, status_of("1840"), None, True, "", id="host-pid-namespace"),
        pytest.param(KTHREADD, status_of("1840\t1"), None, False, "PID namespace of its own",
                     id="own-pid-ns-host-proc-bind-mounted"),
        pytest.param(KTHREADD, status_of("1840\t7\t1"), None, False, "PID 1, 1840 in", id="nested-pid-ns"),
        pytest.param(A_CONTAINER_INIT, status_of("1"), None, False, "a container's own PID namespace",
                     id="a-containers-own-proc"),
        pytest.param(None, status_of("1"), None, False, "no kernel threads, no Docker engine", id="no-pid-2"),
        # Docker in Docker (a swarm rig node): --pid=host gives the inner engine's namespace, which
        # holds every container's processes though it is not the kernel's initial one
        pytest.param(A_CONTAINER_INIT, status_of("310"), "dockerd", True, "", id="inner-engines-namespace"),
        pytest.param(None, status_of("310"), "containerd", True, "", id="inner-containerd-namespace"),
        pytest.param(None, status_of("310\t1"), "dockerd", False, "PID namespace of its own",
                     id="below-the-inner-engine"),
        pytest.param(None, status_of("1"), "python3", False, "no Docker engine", id="other-processes-only"),
        pytest.param(KTHREADD, None, None, False, "cannot read NSpid", id="no-self"),
        pytest.param(KTHREADD, "Name:\tx\nPid:\t9\n", None, False, "NSpid", id="kernel-without-nspid"),
    ],
)
def test_pid_view_from_a_proc_tree(tmp_path, pid2, self_status, engine, host, why):
    if pid2 is not None:
        write_status(tmp_path, "2", pid2)
    if self_status is not None:
        write_status(tmp_path, "self", self_status)
    if engine is not None:
        write_comm(tmp_path, 57, engine)
    write_comm(tmp_path, 1, "tini")
    view = pid_view(str(tmp_path))
    assert view.host is host
    assert why in view.reason and (view.reason == "") is host


def test_pid_view_of_this_test_process():
    """This machine's /proc as the test runner sees it: the runner is in the initial PID
    namespace exactly when its NSpid has one entry (a check that would catch a parser that
    reads the wrong field)."""
    with open("/proc/self/status") as f:
        own = f.read()
    with open("/proc/2/status") as f:
        two = f.read()
    expected = "kthreadd" in two and len([x for x in own.split("NSpid:")[1].splitlines()[0].split()]) == 1
    if "kthreadd" in two:
        assert pid_view("/proc").host is expected
    assert pid_view_from("/proc", two, own).host is expected


def test_proc_reader_reads_private_namespace_paths(tmp_path):
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cgroup").write_text(f"0::/../{B}\n")
    assert ProcReader(str(tmp_path)).container_of(77) == B
