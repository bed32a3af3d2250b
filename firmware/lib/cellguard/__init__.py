# cellguard firmware library. Modules are imported one by one (`from cellguard import runtime`);
# this file stays empty of imports so that importing one module never pulls in the others.
VERSION = "0.1.0"
