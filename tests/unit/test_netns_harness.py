"""The multi-host harness says why it cannot run instead of failing, and only ever picks test addresses."""

from __future__ import annotations

import ipaddress

import pytest

from harness import netns


def test_not_root_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.sys, "platform", "linux")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable() == "multi-host tests create network namespaces, which needs root"


def test_no_iproute2_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.sys, "platform", "linux")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    assert netns.unavailable() == "iproute2's `ip` is not installed"


def test_subnets_come_from_the_benchmarking_range_and_avoid_those_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    in_use = {ipaddress.ip_network("198.18.0.0/16")}  # half the range taken: every pick is in the other half
    monkeypatch.setattr(netns, "_subnets_in_use", lambda: in_use)
    for _ in range(50):
        subnet = netns._pick_subnet()
        assert subnet.subnet_of(netns.TEST_RANGE) and subnet.prefixlen == 24
        assert subnet.subnet_of(ipaddress.ip_network("198.19.0.0/16"))
