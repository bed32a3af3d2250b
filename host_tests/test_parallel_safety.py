"""Flashes that run at once (`make test` runs tests in parallel; a developer flashes two boards) share
build/: the development signing key and the cache of signed slot images. Neither may pull the
ground from under the other."""

import json
import os
import uuid

import pytest
from cgdev import flash as flash_tool
from cgdev import image as image_tool


def test_a_second_keygen_keeps_the_key_the_first_made(tmp_path):
    # Two flashes that both found no key both create one: the second must not replace the key the
    # first is already signing with (its unit would then trust a key nobody signs with).
    key = tmp_path / "keys" / "dev-signing.pem"
    image_tool.keygen(key)
    first = key.read_bytes()
    image_tool.keygen(key)
    assert key.read_bytes() == first
    assert not [p for p in key.parent.iterdir() if p.name != key.name]  # no temporary left behind


class _FakeImageTool:
    """Stands in for cgdev.image in the cache logic: writes a marker instead of building a release."""

    def __init__(self):
        self.built = []

    def release(self, key, version, out, slot_size):
        out.write_bytes(b"image signed with " + key.read_bytes())
        self.built.append(out)
        return out


@pytest.fixture
def version():
    v = "test-" + uuid.uuid4().hex[:8]  # its own names in build/flash, whatever else runs beside
    yield v
    for p in (flash_tool.REPO / "build" / "flash").glob(f"app-{v}-*.img"):
        p.unlink()


def test_building_one_cached_image_never_deletes_another_in_use(tmp_path, version):
    tool = _FakeImageTool()
    key_a, key_b = tmp_path / "a.pem", tmp_path / "b.pem"
    key_a.write_bytes(b"A")
    key_b.write_bytes(b"B")
    image_a = flash_tool._release_cached(tool, key_a, version, 4096)
    image_b = flash_tool._release_cached(tool, key_b, version, 4096)  # another flash, another key
    assert image_a != image_b
    assert image_a.read_bytes() == b"image signed with A"  # still there for the flash sending it
    assert image_b.read_bytes() == b"image signed with B"
    assert flash_tool._release_cached(tool, key_a, version, 4096) == image_a and len(tool.built) == 2


def test_a_cached_image_appears_whole_or_not_at_all(tmp_path, version):
    # The image is built under a temporary name and renamed: a flash that finds it finds all of it.
    written_to = []

    class Watching(_FakeImageTool):
        def release(self, key, version, out, slot_size):
            written_to.append(out.name)
            return super().release(key, version, out, slot_size)

    key = tmp_path / "k.pem"
    key.write_bytes(b"K")
    done = flash_tool._release_cached(Watching(), key, version, 4096)
    assert written_to != [done.name] and done.exists()  # never built in place, where others look
    assert not [p for p in done.parent.iterdir() if p.name.startswith(".") and version in p.name]
    assert os.path.getsize(done) > 0


def test_a_cached_image_another_flash_published_first_is_kept(tmp_path, version):
    # Two flashes that both found no cached image both build one, and no two builds are the same
    # bytes (a new signature each time). The one published first is what a flash already sent:
    # replacing it made that unit's next re-flash send slot a again and reset its boot state.
    class Racing(_FakeImageTool):
        def release(self, key, version, out, slot_size):
            final = out.with_name(out.name[1:].rsplit(".", 2)[0])  # .<name>.<pid>.tmp -> <name>
            final.write_bytes(b"the other flash's image")  # it finished while this one built
            out.write_bytes(b"this flash's image")
            return out

    key = tmp_path / "k.pem"
    key.write_bytes(b"K")
    done = flash_tool._release_cached(Racing(), key, version, 4096)
    assert done.read_bytes() == b"the other flash's image"
    assert not [p for p in done.parent.iterdir() if p.name.startswith(".") and version in p.name]


def test_a_module_with_its_own_shared_fixture_runs_on_one_worker():
    # `make test` (-n 5 --dist loadgroup): the slot images of test_boot_trial are built once, not
    # once per worker; a module without such a fixture is spread test by test.

    from harness import REPO
    from xdist_groups import SharedFixtureScheduling

    sched = SharedFixtureScheduling.__new__(SharedFixtureScheduling)
    sched._rootdir = REPO
    trial = ["host_tests/test_boot_trial.py::test_a", "host_tests/test_boot_trial.py::test_b"]
    crypto = ["host_tests/test_crypto.py::test_a", "host_tests/test_crypto.py::test_b"]
    assert {sched._split_scope(n) for n in trial} == {"host_tests/test_boot_trial.py"}
    assert [sched._split_scope(n) for n in crypto] == crypto


def test_the_longest_work_goes_first_by_the_last_runs_durations():
    # A module kept together weighs what its tests add up to; a test with no record weighs the mean;
    # equal weights keep xdist's order. No record at all (a fresh checkout): xdist's order.
    from collections import OrderedDict

    from xdist_groups import SharedFixtureScheduling

    def queue(*scopes):
        return OrderedDict((s, {n: False for n in ns}) for s, ns in scopes)

    scopes = (("a.py::t", ["a.py::t"]), ("m.py", ["m.py::x", "m.py::y"]), ("c.py::t", ["c.py::t"]),
              ("b.py::t", ["b.py::t"]), ("new.py::t", ["new.py::t"]))
    sched = SharedFixtureScheduling.__new__(SharedFixtureScheduling)
    sched._durations = {"a.py::t": 1.0, "b.py::t": 5.0, "c.py::t": 1.0, "m.py::x": 2.0, "m.py::y": 2.0}
    sched._unknown = 2.2  # the mean
    sched.workqueue = queue(*scopes)
    sched._longest_first()
    assert list(sched.workqueue) == ["b.py::t", "m.py", "new.py::t", "a.py::t", "c.py::t"]
    assert sched.workqueue["m.py"] == {"m.py::x": False, "m.py::y": False}
    sched._durations = {}
    sched.workqueue = queue(*scopes)
    sched._longest_first()
    assert list(sched.workqueue) == [s for s, _ in scopes]


def test_a_run_without_a_cache_orders_by_the_committed_seed(tmp_path):
    # CI starts from a fresh checkout: no .pytest_cache, so the seed (durations.json) orders the work.
    from xdist_groups import SEED, UNLISTED_S, recorded_durations

    class Cache(dict):
        def get(self, key, default):
            return dict.get(self, key, default)

    seeded, unknown = recorded_durations(Cache())
    assert seeded == json.loads(SEED.read_text()) and unknown == UNLISTED_S
    assert max(seeded.values()) >= 10 and min(seeded.values()) >= 1  # the slow tests, as measured
    last = Cache({"cellguard/durations": {"a::t": 1.0, "b::t": 3.0}})
    assert recorded_durations(last) == ({"a::t": 1.0, "b::t": 3.0}, 2.0)  # the last run wins, its mean
    assert recorded_durations(Cache(), seed=tmp_path / "absent.json") == ({}, UNLISTED_S)
