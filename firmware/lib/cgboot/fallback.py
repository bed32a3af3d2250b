# What firmware/main.py does when the application's main loop (cellguard.mainloop, in the signed
# image) cannot run or raises out of it: the trusted half of main.py, kept here so main.py itself
# stays a few lines (a board compiles it on its heap at every boot; this module is frozen with the
# boot part, and on a host it is compiled only on this path). It imports nothing from the image.
#
# An image on trial that failed is recorded as failed (the next boot reverts it) and the board
# reset; an unlocked unit then shows the error and gets its REPL; a locked one must not, and the
# boot part's lockdown loop holds the port (docs/boot.md, "Trial guard" and "Lockdown").
import sys


def _reset_wanted():
    # A reset the main loop means (on the unix port it is a SystemExit) must pass untouched.
    try:
        return sys.modules["cellguard.mainloop"].resetting()
    except Exception:
        return False


def revert_trial(e):
    """An image on trial raised out of its main loop, or cannot even be imported: report the crash
    to the loader boot.py ran and reset. Returns (doing nothing) when nothing is on trial, when boot.py
    ran no loader (a development run, CircuitPython), and for a developer's Ctrl-C or an exit."""
    loader = sys.modules.get("cgboot.loader")
    if loader is None or isinstance(e, (KeyboardInterrupt, SystemExit)):
        return
    try:
        if not loader.report_crash("crash"):
            return
    except Exception as err:  # the flash failed too: the trial's attempt count still reverts it
        print("cgboot: trial failure not recorded:", repr(err))
        return
    print("cgboot: trial image failed (crash): reverting")
    try:
        import machine

        machine.reset()  # a board; the virtual board restarts its VM
    except (ImportError, AttributeError):
        raise SystemExit(75)  # the unix port: the harness's power cycle


def failed(e):
    """main.py's handler for anything its main loop raised (e): never returns to a locked unit's REPL."""
    if _reset_wanted():
        raise e
    revert_trial(e)
    from cgboot import lockdown

    if not lockdown.is_locked():
        raise e
    lockdown.hold("main.py failed: %r" % (e,))
