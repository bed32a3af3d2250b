# The application's main loop, started by firmware/main.py: the status page, then the application
# (SIM lock, attach, readings to the hub, over-the-air updates) and the serial console in one loop.
# In production the console never returns to the Python REPL (docs/field-guide.md). Hardware comes
# from the board profile (board.json) and the hub's address from app.json, both written by
# `make flash`.
#
# It lives in the signed image (verified with the rest, updatable over the air); main.py, the
# trusted part, only imports it and handles what must work when it cannot run (docs/boot.md).
# A trial image is watched ("Trial guard"): the watchdog is armed, an exception from the application
# reverts it, and so does a missing confirm after the deadline.
import json
import sys

from cellguard import VERSION, console, consolelock, runtime, status

_resetting = [False]  # set just before a reset we mean: nothing may swallow it


def resetting():
    """True once a reset we mean is under way (main.py lets it pass, never holds the port)."""
    return _resetting[0]


def _loader():
    # The A/B loader as boot.py left it (None when boot.py did not run it: a CircuitPython board, a
    # test running main.py alone). Never imported here: it would cost heap and know nothing.
    return sys.modules.get("cgboot.loader")


def describe():
    """What the status page shows from the start; returns the board profile (or None)."""
    status.set("firmware", "version", VERSION)
    status.set("device", "runtime", "%s %d.%d.%d" % ((runtime.NAME,) + tuple(sys.implementation.version[:3])))
    profile = None
    # Imported here, after the console and status modules, not at the top: where modules compile
    # from source (a development unit, the host tests) start-up then fits a ~101 KiB heap instead
    # of ~130 KiB (the heap's fragmentation while console.py compiles; test_circuitpython's 128K).
    from cellguard import board

    try:
        profile = board.load()
        status.set("device", "board", profile.name)
        status.set("modem", "dialect", profile.dialect)
        for part in ("sensor", "tamper"):  # the status page says "none fitted", not a fault
            if not profile.data.get(part):
                status.set(part, "fitted", "none")
    except board.BoardError as e:
        status.log(str(e), error=True)
    _describe_boot()
    try:
        from cellguard import keys

        if keys.provisioned():
            status.set("device", "id", keys.device_id())
    except Exception as e:  # a damaged key store is shown, never fatal to the console
        status.log("keys: %r" % (e,), error=True)
    status.log("booted cellguard %s" % VERSION)
    return profile


def _describe_boot():
    # The A/B loader's decision, when boot.py ran the loader (cgboot); on CircuitPython (no loader:
    # no VfsRom) what boot.py's manifest check recorded; otherwise the page says unknown.
    loader = _loader()
    if loader is None:
        if runtime.NAME == runtime.CIRCUITPYTHON:
            from cellguard import cpy_boot

            cpy_boot.publish_manifest_result(status)
        return
    try:
        for msg, bad in loader.messages():  # what the loader said at this boot, for `log`
            status.log("boot: " + msg, error=bad)
        r = loader.current()
        if r is None:
            status.set("boot", "slot", "none")
            status.set("boot", "state", "unverified (development fallback to /lib)")
        else:
            status.set("firmware", "image_version", r.info.version_str())
            _publish_boot_state(r)
    except Exception as e:
        status.log("boot state: %r" % (e,), error=True)


def boot_state_text(mode, attempts, max_attempts, reason, trial):
    """The status page's `state`: confirmed [(why the boot part chose it)] | pending |
    testing (attempt n/N) | reverted (reason) | rescue (...)."""
    if trial:
        return "testing (attempt %d/%d)" % (attempts, max_attempts)
    if mode == "reverted":
        return "reverted (%s)" % (reason or "unknown")
    if mode == "rescue":
        return "rescue (running an image that failed its trial: nothing else verifies)"
    if mode == "pending":
        return "pending"
    return "confirmed (%s)" % reason if reason else "confirmed"


def boot_reason(r):
    """The HELLO's boot reason for this boot's BootResult `r` (docs/protocol.md section 5)."""
    from cellguard import app

    if r is None:
        return app.BOOT_POWER_ON
    if r.trial:
        return app.BOOT_TRIAL
    event = getattr(r, "event", None)  # (a boot part from before events: none)
    if event == "rescue":
        return app.BOOT_RESCUE
    return app.BOOT_RECOVERED if event else app.BOOT_POWER_ON


def _publish_boot_state(r):
    from cgboot import slots

    st = r.slots.read_state()
    status.set("boot", "slot", slots.SLOT_NAMES[r.slot])
    if st is None:  # cannot happen after a boot that ran a slot; say so rather than guess
        status.set("boot", "state", "unknown")
        return
    mode = slots.MODE_NAMES[st.mode]
    status.set("boot", "mode", mode)
    status.set("boot", "attempts", st.attempts)
    status.set("boot", "max_attempts", r.slots.max_attempts)
    status.set("boot", "reason", st.reason or None)
    status.set("boot", "event", getattr(r, "event", None))
    status.set("boot", "state", boot_state_text(mode, st.attempts, r.slots.max_attempts, st.reason, r.trial))


def _app_config():
    try:
        with open(runtime.path_join(runtime.fs_root(), "app.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _no_sensor_reading():
    # A board profile without a sensor still reports, honestly flagged: no values, quality ABSENT.
    from cellguard import reading

    return reading.encode(reading.Reading(reading.ABSENT, t=runtime.time_s()))


def _fitted(build):
    # One of the profile's builders (sensor_monitor, tamper_monitor): a bad section is shown on the
    # status page and leaves that part out, never the other part and never the console.
    try:
        return build()
    except Exception as e:
        status.log("board: %r" % (e,), error=True)
        return None


def _monitors(profile):
    """The profile's sensor and tamper monitors (None where none is fitted; the status page says so).
    An enclosure found open at boot counts: the first poll sees it."""
    return _fitted(profile.sensor_monitor), _fitted(profile.tamper_monitor)


def _tamper_only(profile):
    # No application (no app.json, no modem UART): the enclosure switch is still watched, and an
    # opening is persisted, shown and wipes the keys if so configured; nothing can report it.
    tamper = _fitted(profile.tamper_monitor) if profile is not None else None
    return tamper.poll if tamper is not None else None


def _confirm_image():
    # The application proved itself (the hub acknowledged a message): keep this image.
    loader = _loader()
    if loader is None:
        return
    r = loader.current()
    if r is not None and r.trial:
        loader.confirm()
        _publish_boot_state(r)
        status.log("boot: trial image confirmed")


def start_app(profile, modem_status):
    cfg = _app_config()
    if cfg is None or modem_status is None:
        status.log("app: not started (%s)" % ("no app.json" if cfg is None else "no modem"))
        return None
    missing = [k for k in ("hub_host", "hub_port") if k not in cfg]
    if missing:  # a configuration fault, not the image's: the console still runs and says so
        status.log("app: not started (app.json has no %s)" % ", ".join(missing), error=True)
        return None
    from cellguard import app, updates

    sensor, tamper = _monitors(profile)
    application = app.App(
        modem_status.modem,
        cfg["hub_host"],
        cfg["hub_port"],
        apn=cfg.get("apn", "iot"),
        read_sensor=None if sensor is not None else _no_sensor_reading,
        sensor=sensor,
        tamper=tamper,
        interval_ms=int(cfg.get("interval_s", 3600) * 1000),
        version=VERSION,
        boot_reason=boot_reason(_booted()),  # the hub sees a trial, a rescue in HELLO
        on_healthy=_confirm_image,
    )
    application.on_command = updates.handler(application, reset=lambda: hard_reset("reboot"))
    return application


# ---- resets and the trial guard --------------------------------------------------------------------
def hard_reset(intent=None):
    """Reset the board. intent (e.g. "reboot"): a reset we mean, recorded first so the next boot does
    not take it for a failed trial (machine.reset() reads back as a watchdog reset on the RP2040)."""
    _resetting[0] = True
    loader = _loader()
    if intent and loader is not None:
        try:
            loader.intend_reset(intent)
        except OSError as e:
            print("reset intent not recorded:", repr(e))
    try:
        import machine

        machine.reset()  # a board; the virtual board restarts its VM
    except (ImportError, AttributeError):
        runtime.reset()  # CircuitPython: microcontroller.reset(); the unix port: SystemExit(75)


def fail_trial(reason):
    """The image on trial failed (reason: crash, deadline): revert at the next boot, reset now.
    Returns False (and does nothing) when no image is on trial."""
    loader = _loader()
    if loader is None or not loader.report_crash(reason):
        return False
    print("cgboot: trial image failed (%s): reverting" % reason)
    hard_reset()
    return True


def _booted():
    loader = _loader()
    return loader.current() if loader is not None else None


def _on_trial():
    r = _booted()
    return r is not None and r.trial


def _idle(application, guard):
    # One turn of the main loop between console bytes: the application, then the trial guard.
    trial = _on_trial()
    if application is not None:
        from cellguard import updates

        try:
            application.step(100)
            updates.poll(application)  # resume an interrupted download, re-ask lost chunks
        except Exception as e:  # the application must never take the console down with it...
            status.log("app: %r" % (e,), error=True)
            if trial:  # ...but an image on trial that raises has failed its trial
                fail_trial("crash")
    if guard is not None:
        guard.beat(trial)


def run():
    profile = describe()
    refresh = None
    application = None
    if profile is not None:
        from cellguard import modemstatus

        ms = modemstatus.attach(profile)
        if ms is not None:  # the console keeps answering while a long attach waits on the modem
            ms.modem.at.idle = console.service
        refresh = ms.refresh if ms else None
        try:
            application = start_app(profile, ms)
        except Exception as e:
            if _on_trial():
                raise  # an image on trial that cannot start its application has failed its trial
            status.log("app: not started: %r" % (e,), error=True)  # the console still answers
    guard = None
    if _on_trial():  # the guard's code is loaded only for a trial (it costs heap)
        from cellguard import trial

        guard = trial.TrialGuard(profile, _app_config(), lambda: fail_trial("deadline"))
    print("cellguard", VERSION, "on", runtime.NAME, "- type `help` for the console")
    idle = None
    if application is not None or guard is not None:

        def idle():
            _idle(application, guard)

    else:
        idle = _tamper_only(profile)

    while True:
        try:
            console.main(refresh, idle)  # returns only to hand the port to the REPL
            if consolelock.is_locked():  # a service response opened it: unused, it locks again
                consolelock.watch_repl(lambda: hard_reset("repl"))
            if guard is not None and guard.wdt is not None:
                # Nothing feeds the watchdog in the REPL: its reset is ours, not a failed trial.
                _loader().intend_reset("repl")
                within = guard.stall_ms if guard.timer is not None else guard.timeout_ms
                print("watchdog armed: the unit resets within %d s" % (within // 1000))
            return
        except BaseException as e:  # noqa: B036
            if _resetting[0] or not consolelock.is_locked():
                raise
            status.log("console restarted after %r" % e, error=True)


_ran = [False]  # the main loop ran in this session (boot.py runs it on a locked unit)


def main():
    """The entry point firmware/main.py calls (boot.py, on a locked unit). Returns only to hand
    the port to the REPL; an exception escapes to the caller, which reverts an image on trial and
    holds a locked port. Once per session: after boot.py handed a locked unit's port to the REPL,
    main.py's call returns at once (the next reset runs it again, locked)."""
    if _ran[0]:
        return
    _ran[0] = True
    run()
