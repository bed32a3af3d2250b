# The security record: service attempts and actions and tamper events, kept on flash
# (state/security.json) apart from the console's `log` (the last 24 events, in RAM), so that noise
# cannot push them out (docs/field-guide.md, "Security record"). Refusals are the noise an attacker
# controls: a refusal repeating an earlier one's text is counted in that entry, and refusals only
# ever evict refusals. Each entry: [Unix time of the newest, text, count, 1 if a refusal else 0].
import json

from cellguard import atomic, runtime

_KEEP = 12  # entries that are not refusals (actions, unlocks, tamper)
_NOISE = 4  # refusal entries
_FILE = "state/security.json"


def _path(root=None):
    return runtime.path_join(root or runtime.fs_root(), _FILE)


def load(root=None):
    try:
        with open(_path(root)) as f:
            got = json.load(f)
        return [e for e in got if isinstance(e, list) and len(e) == 4]
    except (OSError, ValueError, TypeError):
        return []


def record(text, refusal=False, root=None):
    """Add one event, persisted before returning. Returns False if the flash refused the write."""
    entries = load(root)
    same = [e for e in entries if e[3] and e[1] == text] if refusal else ()
    if same:
        entry = same[-1]
        entries.remove(entry)
        entry[0], entry[2] = runtime.time_s(), entry[2] + 1
    else:
        entry = [runtime.time_s(), text, 1, 1 if refusal else 0]
    entries.append(entry)
    noise = [e for e in entries if e[3]]
    kept = [e for e in entries if not e[3]]
    drop = noise[:-_NOISE] + kept[:-_KEEP]
    entries = [e for e in entries if not any(e is d for d in drop)]
    try:
        atomic.ensure_dir(runtime.path_join(root or runtime.fs_root(), "state"))
        atomic.write_atomic(_path(root), json.dumps(entries).encode())
    except OSError:
        return False
    return True
