# The application: what a provisioned device does between boot and power-off.
#
#   boot -> SIM/IMEI lock -> attach (PDP) -> HELLO -> every interval: reading -> outbox -> hub
#
# Everything it drives is handed in (the modem driver, a sensor function, the hub's address), and
# it is a step() state machine rather than a blocking loop, so main.py can interleave it with the
# serial console and a test can drive it step by step. Nothing here blocks for longer than the
# timeout step() is given, except the modem commands themselves (bounded by their own timeouts).
from cellguard import keys, message, outbox, runtime, seqstore, simlock, status
from cellguard.at import ModemError

# Boot reasons in the HELLO message (docs/protocol.md section 5).
BOOT_POWER_ON = 0
BOOT_TRIAL = 1  # a new image on trial: it is confirmed once the hub has acknowledged a message
BOOT_RESCUE = 2  # an image that failed its trial runs: nothing else verifies (docs/boot.md)
BOOT_RECOVERED = 3  # the confirmed image or the boot state was damaged: the boot part chose again

STATE_UNPROVISIONED = "unprovisioned"
STATE_LOCKED = "locked"
STATE_OFFLINE = "offline"
STATE_ONLINE = "online"


def _log(msg, error=False):
    status.log(msg, error=error)


class App:
    """modem: a cellguard.modem.Modem. read_sensor() -> payload bytes (or None to skip a reading).
    sensor: a cellguard.sensors.SensorMonitor (instead of read_sensor): each reading goes with its
    quality flag. tamper: a cellguard.tamper.TamperMonitor, polled every step; each event is sealed
    for the hub (cellguard.report) before the monitor wipes the keys, and after a wipe the unit
    only delivers what it had already sealed, then stops (unprovisioned).

    on_healthy(): called once, after the first acknowledgement from the hub (the bootloader's
    confirm(): a trial image proves itself by getting a message through). on_command(record): the
    downlink commands the outbox does not handle itself (update offers, chunks, reboot).
    """

    def __init__(
        self,
        modem,
        hub_host,
        hub_port,
        apn="iot",
        apn_user=None,
        apn_pwd=None,
        read_sensor=None,
        interval_ms=3600000,
        mode=message.ENCRYPT,
        version="",
        boot_reason=BOOT_POWER_ON,
        on_healthy=None,
        on_command=None,
        retry_ms=30000,
        sensor=None,
        tamper=None,
    ):
        self.modem = modem
        self.hub = (hub_host, hub_port)
        self.apn = (apn, apn_user, apn_pwd)
        self.read_sensor = read_sensor
        self.interval_ms = interval_ms
        self.mode = mode
        self.version = version
        self.boot_reason = boot_reason
        self.on_healthy = on_healthy
        self.on_command = on_command
        self.retry_ms = retry_ms
        self.lock = simlock.SimLock(modem, on_tamper=self._tamper)
        # Every data session the driver opens or reopens (its own recovery after a modem restart
        # included) passes the lock first (docs/provisioning.md, "Online: a modem restart").
        modem.data_gate = self.lock.require
        self.state = STATE_OFFLINE
        self.box = None
        self.sock = None
        self.healthy = False
        self._next_reading = runtime.ticks_ms()
        self._next_attempt = runtime.ticks_ms()
        self._pending_tamper = []
        self._acked_seen = 0
        self._wiped = False
        if sensor is not None and read_sensor is None:
            self.read_sensor = _encoder(sensor)
        self.tamper = tamper
        if tamper is not None:
            tamper.on_tamper(self._tamper_switch)
        self._publish()

    # ---- set-up ---------------------------------------------------------------------------------
    def _open_outbox(self):
        # The outbox exists as soon as the device has keys, online or not: readings and tamper
        # reports are stored while the lock or the network keeps them in.
        state = runtime.path_join(runtime.fs_root(), "state")
        counter = seqstore.SequenceCounter(state + "/msg_seq")
        link = message.Channel(
            keys.derive,
            counter,
            key_id=keys.key_id(),
            mode=self.mode,
            unlocked=simlock.certification_unit(),  # from the binding: known before any check
            state_dir=state,
        )
        self.box = outbox.Outbox(link, _NoCarrier(), self.hub[0], self.hub[1], on_command=self._command)
        self._apply_interval()  # a report interval the hub set before a reboot
        self.box.hello(self.boot_reason, self.version)
        for outcome in self._pending_tamper:
            self.box.event(simlock.EVENT_CODE, outcome.encode())
        self._pending_tamper = []

    def _tamper(self, outcome, reason):
        if self.box is None:
            self._pending_tamper.append(outcome)
        else:
            self.box.event(simlock.EVENT_CODE, outcome.encode())

    def _tamper_switch(self, event):
        # TamperMonitor's hook: runs before its wipe, so the report is sealed while the keys exist.
        from cellguard import report

        if self.box is None and keys.provisioned():
            self._open_outbox()  # offline: sealed now, sent once the data session is up
        if self.box is not None:
            report.tamper_reporter(self.box)(event)
        if event.get("wipe"):
            self._wiped = True

    def _attach(self):
        if self.box is None and keys.provisioned():
            self._open_outbox()  # readings are stored from the first attempt on, whatever the modem does
        if not self.modem.session:  # power on, echo off, error codes, URCs, data formats, radio on
            self.modem.power_up()
        if not keys.provisioned():
            self.state = STATE_UNPROVISIONED
            self.lock.check()  # reports UNPROVISIONED on the console
            return
        try:
            self.lock.attach(*self._apn_settings())
            sock = self.modem.open_udp()  # passes the lock's gate again if the modem restarted
        except simlock.LockedOut as e:
            self.state = STATE_LOCKED  # the tamper event waits in the outbox for the right SIM
            _log("app: data session refused: %s" % e)
            return
        # The mode is the channel's own: the hub may have changed it (CONFIG 3, persisted by the outbox).
        self.box.channel.set_mode(self.box.channel.mode, unlocked=simlock.certification_unit())
        self.sock = sock
        self.box.sock = self.sock
        self.state = STATE_ONLINE
        _log("app: online")

    def _apn_settings(self):
        # Credentials given at provisioning live on the unit (simlock.store_apn, the password
        # sealed); app.json names the APN only. Without them, bg96/sim7080 would overwrite the
        # credentials with empty ones at every boot. They belong to their APN: a unit configured
        # for another APN attaches without them (docs/provisioning.md).
        if self.apn[1] is not None:
            return self.apn
        try:
            stored = simlock.load_apn()
        except ValueError as e:
            _log("app: %s: attaching without credentials" % e, error=True)
            return self.apn
        if stored is not None and stored[0] == self.apn[0]:
            return stored
        if stored is not None:
            _log("app: the provisioned APN credentials are for another APN: not used")
        return self.apn

    # ---- the loop -------------------------------------------------------------------------------
    def step(self, timeout_ms=200):
        """Do what is due now; wait for downlinks at most timeout_ms. Returns the state."""
        now = runtime.ticks_ms()
        if self.tamper is not None:
            self.tamper.poll()
        if self._wiped and self.state == STATE_ONLINE and self.box.pending() == 0:
            self.state = STATE_UNPROVISIONED  # the tamper report is delivered; nothing more to say
            _log("app: keys wiped after tamper: report delivered, unit stopped")
        if self.state != STATE_ONLINE:
            if runtime.ticks_diff(now, self._next_attempt) >= 0:
                try:
                    self._attach()
                except ModemError as e:
                    self.state = STATE_OFFLINE
                    _log("app: attach failed: %s" % e, error=True)
                if self.state != STATE_ONLINE:
                    self._next_attempt = runtime.ticks_add(now, self.retry_ms)
            if self.state != STATE_ONLINE:
                self._take_reading(now)
                self._publish()
                runtime.sleep_ms(min(timeout_ms, 50))
                return self.state
        self._take_reading(now)
        try:
            self.box.poll(timeout_ms)
        except outbox.LinkDown as e:
            self._link_lost(e.cause)
        if not self.healthy and self.box.stats["acked"] > 0:
            self.healthy = True
            _log("app: hub acknowledged: healthy")
            if self.on_healthy:
                self.on_healthy()
        self._publish()
        return self.state

    def _link_lost(self, cause):
        # The carrier failed under the outbox: a modem that stopped answering, a restart the
        # driver could not recover from, or the SIM lock refusing the session after a restart
        # (a foreign SIM put in, the PIN refused). Back through _attach(): lock, PIN, PDP.
        self._drop_socket()
        if isinstance(cause, simlock.LockedOut):
            self.state = STATE_LOCKED
            self._next_attempt = runtime.ticks_add(runtime.ticks_ms(), self.retry_ms)
            _log("app: data session refused after a modem restart: %s" % cause, error=True)
        else:
            self.state = STATE_OFFLINE
            self._next_attempt = runtime.ticks_ms()  # attach again at the next step
            _log("app: link lost: %s" % cause, error=True)

    def _drop_socket(self):
        if self.sock is not None:
            self.sock.close()  # never raises: a modem that lost the socket may refuse, that is all
        self.sock = None
        self.box.sock = _NoCarrier()

    def _take_reading(self, now):
        if self.read_sensor is None or self.box is None or self._wiped:
            return
        if runtime.ticks_diff(now, self._next_reading) < 0:
            return
        self._next_reading = runtime.ticks_add(now, self.interval_ms)
        payload = self.read_sensor()
        if payload is not None:
            self.box.enqueue(payload)

    def _apply_interval(self):
        # CONFIG 1 (the outbox validated and persisted it): a shorter interval takes effect now.
        if self.box.interval_s is None:
            return
        self.interval_ms = self.box.interval_s * 1000
        soonest = runtime.ticks_add(runtime.ticks_ms(), self.interval_ms)
        if runtime.ticks_diff(self._next_reading, soonest) > 0:
            self._next_reading = soonest

    def _command(self, record):
        kind = record[0]
        if kind == "config" and record[1] == outbox.CONFIG_INTERVAL:
            self._apply_interval()
        if kind == "decommission":
            _log("app: decommissioned by the hub: keys wiped")
            keys.wipe()
            self.state = STATE_UNPROVISIONED
        if self.on_command:
            self.on_command(record)

    def _publish(self):
        status.set("app", "state", self.state)
        if self.box is not None:
            status.set("outbox", "depth", self.box.pending())
            acked = self.box.stats["acked"]
            status.set("outbox", "acked", acked)
            if acked != self._acked_seen:
                self._acked_seen = acked
                status.set("outbox", "last_delivery", runtime.time_s())
            status.set("messaging", "tx_seq", self.box.channel.counter.peek())
            # The highest sequence received from the hub: the receive window, persisted across
            # restarts (last_seq is the last one *sent*, and -1 after a restart).
            status.set("messaging", "rx_seq", self.box.channel.window.highest)


def _encoder(monitor):
    from cellguard import reading

    def read():
        return reading.encode(monitor.read())

    return read


class _NoCarrier:
    """The outbox's socket until the data session is up: every send fails and is retried later."""

    def sendto(self, data, host, port):
        raise ModemError("no data session")

    def recvfrom(self, timeout_ms):
        return None

    def close(self):
        pass
