# Runs after boot.py: the status page, then the application (SIM lock, attach, readings to the hub,
# over-the-air updates) and the serial console in one loop. In production the console never returns
# to the Python REPL (docs/field-guide.md). Hardware comes from the board profile (board.json) and
# the hub's address from app.json, both written by `make flash`.
import json
import sys

from cellguard import VERSION, board, console, consolelock, runtime, status


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
        from cgboot import loader, slots
    except ImportError:
        return
    try:
        r = loader.current()
        if r is None:
            status.set("boot", "slot", "none")
            status.set("boot", "state", "unverified (development fallback to /lib)")
        else:
            status.set("boot", "slot", slots.SLOT_NAMES[r.slot])
            status.set("boot", "state", "testing" if r.trial else "confirmed")
            status.set("firmware", "image_version", r.info.version_str())
    except Exception as e:
        status.log("boot state: %r" % (e,), error=True)


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
        status.set("boot", "state", "confirmed")
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
    application.on_command = updates.handler(application)
    return application


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
        application = start_app(profile, ms)
    print("cellguard", VERSION, "on", runtime.NAME, "- type `help` for the console")
    idle = None
    if application is not None:

        from cellguard import updates

        def idle():
            try:
                application.step(100)
                updates.poll(application)  # resume an interrupted download, re-ask lost chunks
            except Exception as e:  # the application must never take the console down with it
                status.log("app: %r" % (e,), error=True)

    while True:
        try:
            console.main(refresh, idle)  # returns only to hand the port to the REPL
            return
        except BaseException as e:  # noqa: B036
            if not consolelock.is_locked():
                raise
            status.log("console restarted after %r" % e, error=True)


run()
