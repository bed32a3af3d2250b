# Runs after boot.py: the status page, then the application (SIM lock, attach, readings to the hub,
# over-the-air updates) and the serial console in one loop. In production the console never returns
# to the Python REPL (docs/field-guide.md). Hardware comes from the board profile (board.json) and
# the hub's address from app.json, both written by `make flash`.
#
# A trial image is watched (docs/boot.md, "Trial guard"): the watchdog is armed, an exception from
# the application reverts it, and so does a missing confirm after the deadline. If anything here
# fails on a locked unit, the boot part's lockdown loop holds the port instead of the REPL.
import json
import sys

_DEFAULT_WATCHDOG_MS = 8000  # under the RP2040's 8388 ms cap
_DEFAULT_STALL_MS = 300000  # the loop may block this long in one modem wait (attach: up to 180 s)
_DEFAULT_CONFIRM_DEADLINE_S = 1800
_resetting = [False]  # set just before a reset we mean: nothing may swallow it

try:  # from the verified image; a broken one is handled by _main() below, never by the REPL
    from cellguard import VERSION, board, console, consolelock, runtime, status
except BaseException as e:  # noqa: B036
    _import_failed = e
else:
    _import_failed = None


def describe():
    """What the status page shows from the start; returns the board profile (or None)."""
    status.set("firmware", "version", VERSION)
    status.set("device", "runtime", "%s %d.%d.%d" % ((runtime.NAME,) + tuple(sys.implementation.version[:3])))
    profile = None
    try:
        profile = board.load()
        status.set("device", "board", profile.name)
        status.set("modem", "dialect", profile.dialect)
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
    # The A/B loader's decision, when the loader is installed (cgboot); otherwise the page says unknown.
    try:
        from cgboot import loader
    except ImportError:
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
    """The status page's `state`: confirmed | pending | testing (attempt n/N) | reverted (reason)."""
    if trial:
        return "testing (attempt %d/%d)" % (attempts, max_attempts)
    if mode == "reverted":
        return "reverted (%s)" % (reason or "unknown")
    if mode == "pending":
        return "pending"
    return "confirmed"


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


def _confirm_image():
    # The application proved itself (the hub acknowledged a message): keep this image.
    try:
        from cgboot import loader
    except ImportError:
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
    from cellguard import app, updates

    application = app.App(
        modem_status.modem,
        cfg["hub_host"],
        cfg["hub_port"],
        apn=cfg.get("apn", "iot"),
        read_sensor=_no_sensor_reading,
        interval_ms=int(cfg.get("interval_s", 3600) * 1000),
        version=VERSION,
        on_healthy=_confirm_image,
    )
    application.on_command = updates.handler(application, reset=lambda: hard_reset("reboot"))
    return application


# ---- resets and the trial guard --------------------------------------------------------------------
def hard_reset(intent=None):
    """Reset the board. intent (e.g. "reboot"): a reset we mean, recorded first so the next boot does
    not take it for a failed trial (machine.reset() reads back as a watchdog reset on the RP2040)."""
    _resetting[0] = True
    if intent:
        try:
            from cgboot import loader

            loader.intend_reset(intent)
        except (ImportError, OSError) as e:
            print("reset intent not recorded:", repr(e))
    try:
        import machine

        machine.reset()  # a board; the virtual board restarts its VM
    except (ImportError, AttributeError):
        if _import_failed is not None:
            raise SystemExit(75)  # the unix port without the image's runtime module
        runtime.reset()  # CircuitPython: microcontroller.reset(); the unix port: SystemExit(75)


def fail_trial(reason):
    """The image on trial failed (reason: crash, deadline): revert at the next boot, reset now.
    Returns False (and does nothing) when no image is on trial."""
    try:
        from cgboot import loader
    except ImportError:
        return False
    if not loader.report_crash(reason):
        return False
    print("cgboot: trial image failed (%s): reverting" % reason)
    hard_reset()
    return True


class TrialGuard:
    """While an image is on trial: the hardware watchdog, and a confirm deadline.

    A modem wait may block for minutes, longer than a watchdog may be set (8.4 s on the RP2040), so
    where the board has machine.Timer a timer feeds the watchdog for as long as the main loop has
    beaten within stall_ms; a hung loop stops the feeding and the board resets (a watchdog reset,
    which reverts the trial). Where there is no timer the loop feeds it itself."""

    def __init__(self, profile, cfg):
        wd = (profile.data.get("watchdog") if profile is not None else None) or {}
        cfg = cfg or {}
        self.runtime = runtime
        self.deadline_ms = int(cfg.get("confirm_deadline_s", _DEFAULT_CONFIRM_DEADLINE_S) * 1000)
        self.stall_ms = int(wd.get("stall_ms", _DEFAULT_STALL_MS))
        self.start = self.last = runtime.ticks_ms()
        self.timeout_ms = int(wd.get("timeout_ms", _DEFAULT_WATCHDOG_MS))
        self.wdt = runtime.watchdog(self.timeout_ms) if self.timeout_ms > 0 else None
        self.timer = None
        if self.wdt is not None and not runtime.HOST:
            self._start_timer(wd.get("timer_id", -1))

    def _start_timer(self, timer_id):
        try:
            import machine

            self.timer = machine.Timer(timer_id)
            self.timer.init(period=max(self.timeout_ms // 2, 100), mode=machine.Timer.PERIODIC, callback=self._feed)
        except (ImportError, AttributeError, ValueError, TypeError, OSError) as e:
            self.timer = None  # the loop feeds it (a long modem wait may then trip it)
            print("watchdog: no timer (%r): fed from the loop only" % (e,))

    def _feed(self, _timer=None):
        if self.runtime.ticks_diff(self.runtime.ticks_ms(), self.last) < self.stall_ms:
            self.wdt.feed()

    def beat(self, on_trial):
        """Call from the main loop. Fails the trial when the deadline passed without a confirm."""
        now = self.runtime.ticks_ms()
        self.last = now
        if self.wdt is not None and self.timer is None:
            self.wdt.feed()
        if on_trial and self.runtime.ticks_diff(now, self.start) >= self.deadline_ms:
            status.log("boot: trial image not confirmed within %d s: reverting" % (self.deadline_ms // 1000),
                       error=True)
            fail_trial("deadline")


def _on_trial():
    try:
        from cgboot import loader
    except ImportError:
        return False
    r = loader.current()
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
        refresh = ms.refresh if ms else None
        application = start_app(profile, ms)
    guard = TrialGuard(profile, _app_config()) if _on_trial() else None
    print("cellguard", VERSION, "on", runtime.NAME, "- type `help` for the console")
    idle = None
    if application is not None or guard is not None:

        def idle():
            _idle(application, guard)

    while True:
        try:
            console.main(refresh, idle)  # returns only to hand the port to the REPL
            if guard is not None and guard.wdt is not None:
                # Nothing feeds the watchdog in the REPL: its reset is ours, not a failed trial.
                from cgboot import loader

                loader.intend_reset("repl")
                within = guard.stall_ms if guard.timer is not None else guard.timeout_ms
                print("watchdog armed: the unit resets within %d s" % (within // 1000))
            return
        except BaseException as e:  # noqa: B036
            if _resetting[0] or not consolelock.is_locked():
                raise
            status.log("console restarted after %r" % e, error=True)


def _main():
    try:
        if _import_failed is not None:
            raise _import_failed
        run()
    except BaseException as e:  # noqa: B036
        if _resetting[0]:
            raise
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):  # a developer's Ctrl-C is no crash
            fail_trial("crash")  # an image on trial that cannot even start: revert it (resets)
        _locked_fallback(e)


def _locked_fallback(e):
    # main.py failed outside the console's own guard (a broken image, a bad app.json). An unlocked
    # unit shows the error and gets its REPL; a locked one must not: the boot part holds the port.
    try:
        from cgboot import lockdown
    except ImportError:
        raise e
    if not lockdown.is_locked():
        raise e
    lockdown.hold("main.py failed: %r" % (e,))


_main()
