"""A restarted virtual board is the same unit: its flash AND its SIM keep their state, as hardware does.

And `make flash` judges the unit it leaves behind by its data session, not only by its boot.
"""

import json

import pytest
from vboard import Board, flash, run_tool

pytestmark = pytest.mark.timeout(600)  # three flashes and two board starts on a loaded machine


def test_a_restarted_board_keeps_its_provisioned_sim(tmp_path):
    key = tmp_path / "master.key"
    board = Board(tmp_path)
    try:
        first = flash(board, key)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "SIM lock OK" in first.stdout
    finally:
        board.stop()
    assert json.loads((tmp_path / "flash.sim.json").read_text())["pin_enabled"] is True

    board = Board(tmp_path)  # `make virtual-board` again: same flash image, same SIM
    try:
        again = flash(board, key)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "SIM lock OK" in again.stdout
        assert "sim lock    OK" in run_tool("status", "--port", board.port).stdout
        reprovisioned = flash(board, key, "--reprovision")  # the device PIN still opens the SIM
        assert reprovisioned.returncode == 0, reprovisioned.stdout + reprovisioned.stderr
    finally:
        board.stop()


def test_flash_fails_when_the_unit_refuses_its_data_session(tmp_path):
    key = tmp_path / "master.key"
    board = Board(tmp_path)
    try:
        assert flash(board, key).returncode == 0
    finally:
        board.stop()
    # Someone turns the SIM's PIN lock off behind the unit's back (the SIM in a router, say).
    sim_file = tmp_path / "flash.sim.json"
    sim = json.loads(sim_file.read_text())
    sim["pin_enabled"] = False
    sim_file.write_text(json.dumps(sim))

    board = Board(tmp_path)
    try:
        proc = flash(board, key)
        assert proc.returncode == 7, proc.stdout + proc.stderr
        assert "flash: the unit refuses its data session: SIM lock SIM_LOCK_OFF" in proc.stderr
        assert "flashed virtual" not in proc.stdout
    finally:
        board.stop()


def test_a_new_flash_image_comes_with_a_new_sim(tmp_path):
    (tmp_path / "flash.sim.json").write_text(json.dumps({"stale": True}))  # left by a deleted unit
    board = Board(tmp_path)
    try:
        assert json.loads((tmp_path / "flash.sim.json").read_text())["pin_enabled"] is False
    finally:
        board.stop()
