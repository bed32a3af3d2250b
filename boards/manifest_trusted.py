# Freezes cellguard's trusted boot part (cgboot: verifier, slot manager, loader, update writer and
# the built-in public keys) into a custom MicroPython build, so nothing on the filesystem or sent
# over the air can replace it. A board's manifest.py includes it after the port's own manifest:
#
#     include("$(PORT_DIR)/boards/manifest.py")
#     include("<path to this repo>/boards/manifest_trusted.py")
#
# Generate firmware/lib/cgboot/trusted_keys.py with `cellguard image trust ...` first.
# See docs/boot.md, "Freezing the trusted part".
package("cgboot", base_path="../firmware/lib", opt=3)  # noqa: F821  (manifest builtins)
