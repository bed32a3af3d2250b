"""The power-cut flash simulator that the storage tests stand on: it must really cut, and tear."""

FS_SCRIPT = """
import vfs, os
from flashsim import FlashSim, PowerCut
flash = FlashSim(64, 512)
vfs.VfsLfs2.mkfs(flash)
vfs.mount(vfs.VfsLfs2(flash), '/fl')
with open('/fl/state', 'w') as f:
    f.write('old')
seen = set()
n = 0
while True:
    flash.arm(n, torn=TORN)
    try:
        with open('/fl/state.tmp', 'w') as f:
            f.write('new' * 300)
        os.rename('/fl/state.tmp', '/fl/state')
        finished = True
    except PowerCut:
        finished = False
    vfs.umount('/fl')
    flash = flash.reboot()
    vfs.mount(vfs.VfsLfs2(flash), '/fl')
    with open('/fl/state') as f:
        seen.add(f.read()[:3])
    if finished:
        break
    with open('/fl/state', 'w') as f:
        f.write('old')
    n += 1
print(n, sorted(seen))
"""


def test_write_rename_survives_every_cut(mp):
    # littlefs's write-then-rename is atomic: after a cut at any program/erase the file is old or new.
    for torn in (False, True):
        points, seen = mp.run(FS_SCRIPT.replace("TORN", str(torn))).split(" ", 1)
        assert int(points) > 3  # it really was cut at several points before finishing
        assert seen.strip() == "['new', 'old']"


def test_program_without_erase_is_caught(mp):
    # NOR semantics: programming over programmed bits ANDs them, as real flash does.
    out = mp.run(
        "from flashsim import FlashSim\n"
        "f = FlashSim(4, 16)\n"
        "f.writeblocks(0, b'\\x0f' * 16, 0)\n"
        "f.writeblocks(0, b'\\xf0' * 16, 0)\n"
        "b = bytearray(16); f.readblocks(0, b, 0); print(b[0])\n"
        "f.ioctl(6, 0); f.readblocks(0, b, 0); print(b[0])"
    )
    assert out.split() == ["0", "255"]


def test_torn_program_writes_half(mp):
    out = mp.run(
        "from flashsim import FlashSim, PowerCut\n"
        "f = FlashSim(4, 16)\n"
        "f.arm(0, torn=True)\n"
        "try:\n f.writeblocks(1, b'\\x00' * 16, 0)\nexcept PowerCut:\n print('cut')\n"
        "f = f.reboot(); b = bytearray(16); f.readblocks(1, b, 0); print(b.hex())"
    )
    assert out.split() == ["cut", "00" * 8 + "ff" * 8]
