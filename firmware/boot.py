# First file a board runs: Ctrl-C off before anything can be interrupted; then the A/B loader
# (cgboot) verifies the active slot, trial-boots a pending update or reverts a failed one, and
# mounts the verified application image at /app, first on sys.path (docs/boot.md). CircuitPython
# has no VfsRom: there the application's files are checked against a signed manifest instead, and a
# mismatch halts the boot. Then CircuitPython's storage set-up and the console's production lock
# (Ctrl-C back on only for an unlocked console).
#
# The loader runs before anything imports `cellguard`, so the package comes from the signed image.
# If no slot holds a verified image (a development board, a fresh flash) it says so loudly and falls
# back to the unsigned library in /lib, so firmware/main.py still runs for development. A locked
# (production) unit never does: with nothing verified it refuses (cgboot.lockdown, or a halt on
# CircuitPython, whose USB is not up yet while boot.py runs).
try:
    import micropython

    micropython.kbd_intr(-1)
except BaseException:  # noqa: B036  (CircuitPython has no kbd_intr; see boards/README.md)
    pass

import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")  # where cgboot lives when it is not frozen into the firmware


def _runtime_name():
    # As cellguard.runtime decides it (which cannot be imported yet): the boot part's one rule.
    try:
        from cgboot import host
    except ImportError:  # no boot part: _boot() says so on either runtime
        return sys.implementation.name
    return host.runtime_name()


def _boot_circuitpython():
    # No VfsRom, so no A/B loader: the application's files are checked against the signed manifest
    # (/manifest.img, written by tools/flash.py) before anything imports them (docs/runtimes.md).
    try:
        from cgboot import manifest
    except ImportError as e:
        print("cgboot: boot part missing (%s): RUNNING UNVERIFIED CODE FROM /lib" % e)
        return None
    try:
        count, version = manifest.boot_device()
    except manifest.NoManifest as e:
        if _locked():
            manifest.refuse("%s on a locked unit: nothing unverified runs" % e)
        print("cgboot: %s: RUNNING UNVERIFIED CODE FROM /lib (development fallback)" % e)
        manifest.RESULT = ("unverified", str(e))
        return None
    except Exception as e:  # a bad signature, a changed or missing file, an unreadable manifest
        manifest.refuse(e)
    print("cgboot: %d files verified against the signed manifest (version %s)" % (count, version))
    return count


def _locked():
    # The console's production lock, read by the boot part (an unreadable record counts as locked).
    from cgboot import lockdown

    return lockdown.is_locked()


def _refuse_unverified(why):
    # MicroPython: a locked unit with no verified image must not run /lib; the boot part holds the
    # console (the REPL stays shut) and resets later to try again. An unlocked one falls back.
    if _locked():
        from cgboot import lockdown

        lockdown.hold(why)
    print("cgboot: RUNNING UNVERIFIED CODE FROM /lib (development fallback)")


def _boot():
    if _runtime_name() != "micropython":
        return _boot_circuitpython()
    try:
        from cgboot import loader
    except ImportError as e:
        print("cgboot: boot part missing (%s): RUNNING UNVERIFIED CODE FROM /lib" % e)
        return None
    try:
        result = loader.boot_device()
    except Exception as e:  # a broken filesystem must not stop the development fallback
        print("cgboot: boot failed (%r)" % e)
        _refuse_unverified("boot failed: %r" % (e,))
        return None
    if result is None:
        _refuse_unverified("no verified image in either slot")
    return result


boot_result = _boot()


def _interrupt_for_unlocked_unit(why):
    # The application's console lock module did not load (no verified image on a unit without
    # /lib, a broken image): the boot part reads the same record. Ctrl-C comes back only on an
    # unlocked unit; a locked one stays locked, and main.py hands the port to cgboot.lockdown.
    print("boot: console lock from the boot part (%r)" % (why,))
    try:
        from cgboot import lockdown

        if not lockdown.is_locked():
            import micropython

            micropython.kbd_intr(3)
    except BaseException as e:  # noqa: B036
        print("boot: console lock state unknown, staying locked:", repr(e))


try:
    from cellguard import runtime  # from the verified image if one booted (else /lib)
except BaseException as e:  # noqa: B036  (never let boot.py fail: a board then skips main.py)
    runtime = None
    print("boot: the application does not import:", repr(e))

# CircuitPython: its flash is read-only to code unless boot.py remounts it (see docs/runtimes.md).
if runtime is not None and runtime.NAME == runtime.CIRCUITPYTHON:
    from cellguard import consolelock as _lock
    from cellguard import cpy_boot

    # A production-locked unit is shipped: its drive is hidden from USB hosts and USB carries no REPL,
    # only the data CDC the console runs on (cpy_boot.status_port()).
    _shipped = _lock.is_locked()
    cpy_boot.prepare_storage(disable_usb_drive=_shipped)
    cpy_boot.prepare_usb(shipped=_shipped)
    cpy_boot.save_manifest_result()  # for the status page: CircuitPython restarts the VM before main.py
elif runtime is None and _runtime_name() == "circuitpython":
    # A fresh board: only this boot.py, copied onto CIRCUITPY by hand (docs/flashing.md). Make the
    # drive writable by code so tools/flash.py can send the rest through the REPL; never on a locked
    # unit (without the boot part there is no lock record to read: nothing was flashed yet).
    try:
        _fresh_locked = _locked()
    except ImportError:
        _fresh_locked = False
    if not _fresh_locked:
        import storage

        storage.remount("/", readonly=False)
        print("boot: CIRCUITPY writable by code (no application yet): flash it with tools/flash.py")

try:
    from cellguard import consolelock

    consolelock.apply()
except BaseException as e:  # noqa: B036  (an unreadable lock stays locked: Ctrl-C remains off)
    _interrupt_for_unlocked_unit(e)


def _run_locked_console():
    # A locked MicroPython unit runs its main loop (and so its console) from here, not from main.py:
    # every reset runs boot.py, while a soft reset from the raw REPL (mpremote's) runs boot.py
    # alone. So no reset, soft or hard, leaves a REPL that a service response opened. When one
    # does, the main loop returns here, and main.py (after a friendly-REPL reset) finds it done.
    try:
        from cellguard import mainloop

        mainloop.main()
    except BaseException as e:  # noqa: B036  (as main.py: an image on trial reverts, the port stays held)
        from cgboot import fallback

        fallback.failed(e)


if _runtime_name() == "micropython" and _locked():
    _run_locked_console()
