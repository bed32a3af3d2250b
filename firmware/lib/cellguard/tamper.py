# Tamper input: an enclosure switch (or a light sensor's comparator) on a GPIO.
#
# When the enclosure opens, TamperMonitor.poll() raises a tamper event: it is persisted first (so a
# reboot or power cut cannot make it disappear), shown on the console (events/status: section
# "tamper"), handed to the on_tamper hooks (the hub report over the secure channel), and, when the
# device's configuration says wipe_keys, the device's keys are wiped (keys.wipe(), the decommission
# path). The report goes before the wipe: once the keys are gone nothing can be signed. A wipe is
# never skipped because a report failed. See docs/sensors.md ("Tamper").
#
# The pin is handed in: a machine.Pin (value() method, irq()) on MicroPython, a digitalio.DigitalInOut
# (value property) on CircuitPython. Where the pin has irq(), an edge latches a flag, so an opening
# shorter than the poll interval is still seen; CircuitPython pins have no irq (docs/runtimes.md).
import os

from cellguard import events, runtime, security

_KEEP = 16  # events kept in the log file


class TamperLog:
    """The persisted tamper events: state/tamper.log under fs_root, one "seq time source wiped" line
    each, newest last, at most 16; replaced atomically (write a tmp file, then rename)."""

    def __init__(self, root=None):
        root = self.root = root or runtime.fs_root()
        self._dir = runtime.path_join(root, "state")
        self.path = runtime.path_join(self._dir, "tamper.log")

    def load(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError:
            return []
        out = []
        for line in text.split("\n"):
            parts = line.split()
            if len(parts) == 4:
                out.append({"seq": int(parts[0]), "t": int(parts[1]), "source": parts[2], "wiped": parts[3] == "1"})
        return out

    def next_seq(self):
        old = self.load()
        return old[-1]["seq"] + 1 if old else 1

    def append(self, event):
        self._write(self.load() + [event])

    def mark_wiped(self, seq):
        kept = self.load()
        for e in kept:
            if e["seq"] == seq:
                e["wiped"] = True
        self._write(kept)

    def _write(self, kept):
        try:
            os.mkdir(self._dir)
        except OSError:
            pass  # exists
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for e in kept[-_KEEP:]:
                f.write("%d %d %s %d\n" % (e["seq"], e["t"], e["source"], 1 if e["wiped"] else 0))
        os.rename(tmp, self.path)


def _wipe_keys():
    from cellguard import keys  # the messaging part's key store

    keys.wipe()


class KeysInput:
    """CircuitPython: the tamper pin scanned in the background by keypad.Keys, presented like a
    machine.Pin (value, irq) so TamperMonitor latches an opening shorter than its poll interval.

    keys: keypad.Keys((board.<pin>,), value_when_pressed=<pressed_level>, pull=...), one pin.
    pressed_level: the pin level keypad calls "pressed" (default: the open level). keypad's internal
    pull is the opposite of value_when_pressed, so a switch to ground that opens to a pull-up
    (open_level=1) needs value_when_pressed=False, pull=True and pressed_level=0: "pressed" is then
    the closed enclosure (board.Profile.tamper_monitor builds it so).
    A queue overflow loses edges, so it counts as an opening: a tamper input errs towards alarm.
    """

    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, keys, open_level=1, pressed_level=None):
        self._keys = keys
        self._open_level = 1 if open_level else 0
        self._pressed = self._open_level if pressed_level is None else (1 if pressed_level else 0)
        self._level = 1 - self._pressed  # keypad starts with every key released
        self._handler = None
        self._trigger = 0

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        self._handler = handler
        self._trigger = trigger

    def _edge(self, level):
        edge = self.IRQ_RISING if level else self.IRQ_FALLING
        if self._handler is not None and self._trigger & edge:
            self._handler(self)
        self._level = level

    @property
    def value(self):
        queue = self._keys.events
        if queue.overflowed:
            # Edges were lost: count it as an opening, and let the scanner re-report the present
            # state (after reset() a switch that is open now gives a fresh "pressed" event).
            queue.clear()
            self._edge(self._open_level)
            self._level = 1 - self._pressed  # reset() reports what is pressed now, from released
            self._keys.reset()
        event = queue.get()
        while event is not None:
            self._edge(self._pressed if event.pressed else 1 - self._pressed)
            event = queue.get()
        return self._level


class TamperMonitor:
    def __init__(self, pin, open_level=1, source="enclosure", wipe_keys=False, on_tamper=(), wipe=None,
                 log=None, clock=None):
        self._pin = pin
        self._open_level = 1 if open_level else 0
        self.source = source
        self.wipe_keys = wipe_keys  # from the device configuration
        self._hooks = list(on_tamper)
        self._wipe = wipe or _wipe_keys
        self.log = log or TamperLog()
        self._clock = clock or runtime.time_s
        self._latched = False
        self._open = False
        irq = getattr(pin, "irq", None)
        if irq is not None:
            pin_cls = type(pin)
            edge = pin_cls.IRQ_RISING if self._open_level else pin_cls.IRQ_FALLING
            irq(handler=self._irq, trigger=edge)
        events.set("tamper", "state", "closed")
        # The last persisted event, so the status page shows it after a reboot too.
        old = self.log.load()
        last = old[-1] if old else None
        events.set("tamper", "seq", last["seq"] if last else 0)
        events.set("tamper", "last", last["t"] if last else None)
        events.set("tamper", "wiped", last["wiped"] if last else False)

    def _irq(self, pin):
        self._latched = True  # no allocation in an IRQ handler: poll() does the work

    def on_tamper(self, hook):
        """Add a hook called with each event dict; the hub report registers here."""
        self._hooks.append(hook)

    def level(self):
        v = self._pin.value
        if callable(v):  # machine.Pin.value() is a method, DigitalInOut.value a property
            v = v()
        return 1 if v else 0

    def poll(self):
        """Check the switch; returns the new tamper event (a dict) or None."""
        is_open = self.level() == self._open_level
        latched, self._latched = self._latched, False
        fresh = (is_open and not self._open) or (latched and not self._open)
        if is_open != self._open:
            events.set("tamper", "state", "open" if is_open else "closed")
            if not is_open:
                events.log("tamper: %s closed" % self.source)
        self._open = is_open
        return self._raise() if fresh else None

    def _raise(self):
        event = {"seq": self.log.next_seq(), "t": self._clock(), "source": self.source, "wiped": False,
                 "wipe": bool(self.wipe_keys)}
        events.log("tamper: %s opened (#%d)" % (self.source, event["seq"]))
        try:
            self.log.append(event)  # persisted first; rewritten below once the wipe is done
        except OSError as exc:
            events.log("tamper: could not persist event: %r" % (exc,))
        # Beside the service events, on the same flash as the tamper log.
        security.record("tamper: %s opened (#%d)" % (self.source, event["seq"]), root=getattr(self.log, "root", None))
        for hook in self._hooks:
            try:
                hook(event)
            except Exception as exc:  # a failed report must not stop the wipe
                events.log("tamper: report hook failed: %r" % (exc,))
        events.set("tamper", "wiped", False)
        if self.wipe_keys:
            self._do_wipe(event)
        events.set("tamper", "seq", event["seq"])
        events.set("tamper", "last", event["t"])
        return event

    def _do_wipe(self, event):
        try:
            self._wipe()
        except ImportError:
            events.log("tamper: no key store (cellguard.keys) to wipe")
            return
        except Exception as exc:
            events.log("tamper: key wipe failed: %r" % (exc,))
            return
        event["wiped"] = True
        events.log("tamper: keys wiped")
        security.record("tamper: keys wiped (#%d)" % event["seq"], root=getattr(self.log, "root", None))
        events.set("tamper", "wiped", True)
        try:
            self.log.mark_wiped(event["seq"])
        except OSError as exc:
            events.log("tamper: could not persist wipe: %r" % (exc,))
