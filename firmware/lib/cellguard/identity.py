# The identities the SIM lock binds, checked before anything trusts them: an IMEI (3GPP TS 23.003
# 6.2: 14 digits and a Luhn check digit), an IMSI (15 digits; TS 23.003 2.2 allows fewer, no
# operator of ours uses them) and an ICCID (ITU-T E.118: 19 digits and a Luhn check digit, or 20
# with the check digit last). A modem that answers anything else - a URC inside the reply, a
# corrupted or blank identity - has not told us who it is.
from cellguard.at import ModemError

IMEI = "IMEI"
IMSI = "IMSI"
ICCID = "ICCID"


class IdentityInvalid(ModemError):
    """The modem's reply to an identity command held no valid identity of that kind: .kind is
    IMEI, IMSI or ICCID, .command the command (no secret: identity commands carry none)."""

    def __init__(self, kind, command):
        super().__init__("no valid %s in the reply to %s" % (kind, command.decode()))
        self.kind = kind
        self.command = command


def luhn_ok(digits):
    total = 0
    double = False
    for k in range(len(digits) - 1, -1, -1):
        d = ord(digits[k]) - 48
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total % 10 == 0


def valid(kind, text):
    """True if text (a str) is a well-formed identity of this kind."""
    if not text or not text.isdigit():
        return False
    n = len(text)
    if kind == IMEI:
        return n == 15 and luhn_ok(text)
    if kind == IMSI:
        return n == 15
    if kind == ICCID:
        return 19 <= n <= 20 and luhn_ok(text)
    return False


def check(imei, iccid, imsi):
    """None if all three are valid, else the name of the first that is not (for provisioning)."""
    for kind, value in ((IMEI, imei), (ICCID, iccid), (IMSI, imsi)):
        if not valid(kind, value):
            return kind
    return None
