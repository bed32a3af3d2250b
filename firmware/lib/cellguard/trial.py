# The trial guard firmware/main.py runs while an image is on trial (docs/boot.md, "Trial guard"):
# the hardware watchdog, fed by a timer while the main loop is alive, and the confirm deadline.
# Imported only when an image is on trial.
from cellguard import runtime, status

_DEFAULT_WATCHDOG_MS = 8000  # under the RP2040's 8388 ms cap
_DEFAULT_STALL_MS = 300000  # the loop may block this long in one modem wait (attach: up to 180 s)
_DEFAULT_CONFIRM_DEADLINE_S = 1800


class TrialGuard:
    """While an image is on trial: the hardware watchdog, and a confirm deadline.

    A modem wait may block for minutes, longer than a watchdog may be set (8.4 s on the RP2040), so
    where the board has machine.Timer a timer feeds the watchdog for as long as the main loop has
    beaten within stall_ms; a hung loop stops the feeding and the board resets (a watchdog reset,
    which reverts the trial). Where there is no timer the loop feeds it itself."""

    def __init__(self, profile, cfg, on_deadline):
        self.on_deadline = on_deadline  # main.py: report the failure and reset
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
            self.on_deadline()
