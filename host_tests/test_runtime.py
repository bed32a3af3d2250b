"""The platform layer (firmware/lib/cellguard/runtime.py) on both runtimes."""

import os
import pty
import select
import subprocess
import tty

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from harness import micropython_cmd, micropython_env, run_micropython


def test_micropython_is_the_real_unix_port(mp):
    out = mp.run("import sys; print(sys.implementation.name, sys.platform)")
    assert out.split() == ["micropython", "linux"]


def test_runtime_names_itself(runtime):
    out = runtime.run("from cellguard import runtime; print(runtime.NAME, runtime.UNIX_PORT)")
    expected = {"micropython": "micropython True", "cpython": "cpython False"}[runtime.name]
    assert out.strip() == expected


def test_small_heap_is_enforced(mp):
    # The heap really is small: a 200 KiB allocation fails on a 128 KiB heap.
    out = mp.run(
        "try:\n bytearray(200*1024)\n print('allocated')\nexcept MemoryError:\n print('MemoryError')"
    )
    assert out.strip() == "MemoryError"


AES_SCRIPT = """
import sys
from cellguard import runtime
key = bytes(range(16))
block = bytearray(b'cellguard block!' + bytes(range(16)))
out = bytearray(32)
runtime.aes_block(key).encrypt(block, out)
print(sys.implementation.name, out.hex())
inplace = bytearray(block)
runtime.aes_block(key).encrypt(inplace, inplace)
print(inplace == out)
"""


def test_aes_block_matches_cryptography(runtime):
    name, hexed, inplace = runtime.run(AES_SCRIPT).split()
    assert name == runtime.name
    key = bytes(range(16))
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    assert hexed == enc.update(b"cellguard block!" + bytes(range(16))).hex()
    assert inplace == "True"


def test_aes_fips197_vector(runtime):
    # FIPS-197 appendix C.1: AES-128.
    out = runtime.run(
        "from cellguard import runtime\n"
        "o = bytearray(16)\n"
        "runtime.aes_block(bytes(range(16))).encrypt(bytes.fromhex('00112233445566778899aabbccddeeff'), o)\n"
        "print(o.hex())"
    )
    assert out.strip() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def test_aes_rejects_wrong_key_length(runtime):
    out = runtime.run(
        "from cellguard import runtime\n"
        "try:\n runtime.aes_block(b'short')\nexcept ValueError as e:\n print('ValueError', e)"
    )
    assert out.startswith("ValueError")


def test_sha256_and_random(runtime):
    out = runtime.run(
        "from cellguard import runtime\n"
        "print(runtime.sha256(b'abc').digest().hex())\n"
        "a = runtime.random_bytes(16); b = runtime.random_bytes(16)\n"
        "print(len(a), a != b)"
    )
    digest, rest = out.strip().split("\n")
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert rest == "16 True"


def test_ticks_wrap_like_micropython(runtime):
    out = runtime.run(
        "from cellguard import runtime as r\n"
        "t = r.ticks_ms(); r.sleep_ms(20); d = r.ticks_diff(r.ticks_ms(), t)\n"
        "print(d >= 19, r.ticks_diff(r.ticks_add(5, -10), 5))"
    )
    assert out.split() == ["True", "-10"]


def test_fs_root_from_environment(runtime, tmp_path):
    out = runtime.run(
        "from cellguard import runtime\nprint(runtime.fs_root(), runtime.path_join(runtime.fs_root(), 'keys'))",
        env={**os.environ, "CELLGUARD_FS": str(tmp_path)},
    )
    assert out.split() == [str(tmp_path), f"{tmp_path}/keys"]


ROOTS = """
import circuitpython_unix_build
import sys
from cellguard import runtime
from cgboot import loader, lockdown, manifest
print(sys.implementation.name, sys.platform)
print(runtime.HOST, runtime.NAME, lockdown.is_circuitpython())
print(runtime.fs_root(), lockdown._root(), manifest.default_root(), loader.default_root())
"""


def test_firmware_and_boot_part_agree_on_a_circuitpython_unix_build(runtime, tmp_path):
    # CircuitPython's unix port names itself "circuitpython" on sys.platform "linux": a host to the
    # boot part, and (by another rule) once a board to the firmware, which then kept its state in
    # "/" while boot.py read the lock and the manifest from $CELLGUARD_FS. One rule now (cgboot.host).
    from harness import MP_SUPPORT

    out = runtime.run(
        ROOTS, env={**os.environ, "CELLGUARD_FS": str(tmp_path)}, extra_paths=(MP_SUPPORT / "cpy_shim",)
    ).splitlines()
    assert out[0] == "circuitpython linux"
    assert out[1] == "True circuitpython True"
    assert out[2].split() == [str(tmp_path)] * 4


def test_no_hardware_import_at_module_top_level():
    # Importing every firmware module must not import machine/board/busio (the board hands them in).
    import pathlib

    from harness import FIRMWARE_LIB

    modules = sorted(
        ".".join(p.relative_to(FIRMWARE_LIB).with_suffix("").parts)
        for p in pathlib.Path(FIRMWARE_LIB).rglob("*.py")
        if p.name != "__init__.py"
    )
    assert "cellguard.runtime" in modules
    script = (
        "import sys\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
        "print(sorted(m for m in ('machine', 'board', 'busio') if m in sys.modules))"
    )
    assert run_micropython(script, heapsize="1M").strip() == "[]"


@pytest.mark.timeout(120)
def test_uart_over_a_real_pty_on_micropython():
    """The unix port's TtyStream talks to a process on a real pty, bytes split across reads."""
    master, slave = pty.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    script = f"""
from cellguard import runtime
u = runtime.open_uart({path!r}, 115200)
u.write(b'AT\\r')
buf = bytearray(64)
got = b''
while not got.endswith(b'OK\\r\\n'):
    assert u.wait_readable(30000), 'timed out'
    n = u.readinto(buf)
    got += bytes(buf[:n])
print(repr(got), u.readinto(buf))
"""
    proc = subprocess.Popen(
        [*micropython_cmd(), "-c", script], env=micropython_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        received = b""
        while not received.endswith(b"\r"):
            ready, _, _ = select.select([master], [], [], 60)  # the write is the event; bounds a hang
            assert ready, "firmware never wrote"
            received += os.read(master, 64)
        assert received == b"AT\r"
        os.write(master, b"\r\nO")  # split mid-line: the stream must not block or lose bytes
        os.write(master, b"K\r\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)
    assert out.strip() == "b'\\r\\nOK\\r\\n' 0"
    assert proc.returncode == 0


@pytest.mark.timeout(120)
def test_uart_over_a_real_pty_on_cpython():
    """CPython's UART is pyserial on the same pty: non-blocking reads, waiting with a deadline."""
    from cellguard import runtime

    master, slave = pty.openpty()
    tty.setraw(master)
    stream = runtime.open_uart(os.ttyname(slave), 115200)
    try:
        buf = bytearray(16)
        assert stream.readinto(buf) == 0
        assert stream.wait_readable(20) is False
        stream.write(b"AT\r")
        assert os.read(master, 16) == b"AT\r"
        os.write(master, b"\r\nOK\r\n")
        assert stream.wait_readable(5000) is True
        got = b""
        while len(got) < 6:
            stream.wait_readable(1000)
            got += bytes(buf[: stream.readinto(buf)])
        assert got == b"\r\nOK\r\n"
    finally:
        stream.close()
        os.close(master)
        os.close(slave)
