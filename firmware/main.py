# Runs after boot.py. The application (modem, SIM lock, messaging, outbox, console) is wired up
# here from the board profile as the issues that build it land; until then it reports what it is.
from cellguard import VERSION, runtime

print("cellguard", VERSION, "on", runtime.NAME)
