# Small file helpers for device state under runtime.fs_root(): atomic replace (write a temporary
# file, then rename over the old one; littlefs renames are atomic, so a power cut leaves either the
# old or the new content, never a torn mix), and the few os calls MicroPython lacks (no os.path).
import os


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def ensure_dir(path):
    # mkdir -p, one component at a time.
    cur = ""
    for part in path.split("/"):
        if not part:
            cur = "/" if not cur else cur
            continue
        cur = part if cur == "" else (cur + part if cur.endswith("/") else cur + "/" + part)
        if not exists(cur):
            try:
                os.mkdir(cur)
            except OSError:
                if not exists(cur):
                    raise


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []
