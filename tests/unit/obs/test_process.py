"""The parsing of cgroup v2 files, behind the default memory limit."""

from __future__ import annotations

from meshgate.obs.process import cgroup_dirs, cgroup_path, memory_max


def test_cgroup_v2_path_is_found_among_v1_lines() -> None:
    text = "12:memory:/docker/x\n0::/kubepods.slice/pod1/ctr\n"
    assert cgroup_path(text) == "/kubepods.slice/pod1/ctr"
    assert cgroup_path("4:cpu:/x\n") is None


def test_cgroup_dirs_walk_up_to_the_root() -> None:
    assert cgroup_dirs("/a/b") == ["a/b", "a", ""]
    assert cgroup_dirs("/") == [""]
    assert cgroup_dirs(None) == [""]
    assert cgroup_dirs("/a/../b") == ["a/b", "a", ""]  # never leaves the mount


def test_memory_max_reads_bytes_and_max() -> None:
    assert memory_max("536870912\n") == 536870912
    assert memory_max("max\n") is None
    assert memory_max("") is None
