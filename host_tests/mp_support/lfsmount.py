# Test scaffolding: a littlefs on the power-cut flash simulator, mounted where the firmware keeps
# its state (runtime.fs_root()), with the reboot step every power-cut test repeats.
import vfs
from cellguard import runtime
from flashsim import FlashSim

MOUNT = "/fl"


def fresh(blocks=64, block_size=512):
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass
    flash = FlashSim(blocks, block_size)
    vfs.VfsLfs2.mkfs(flash)
    vfs.mount(vfs.VfsLfs2(flash), MOUNT)
    runtime.set_fs_root(MOUNT)
    return flash


def reboot(flash):
    """Power returns: unmount what the cut left, remount over the same bytes, as a device boots."""
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass
    flash = flash.reboot()
    vfs.mount(vfs.VfsLfs2(flash), MOUNT)
    return flash
