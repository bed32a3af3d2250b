# cgboot: the trusted boot part of cellguard (verifier, slot manager, loader, update writer).
#
# It is small, imports nothing from the application (the `cellguard` package lives in the signed,
# updatable image), and is meant to be frozen into the firmware (boards/manifest_trusted.py), so it
# is never replaced over the air. See docs/boot.md and docs/image-format.md.
VERSION = "1.0.0"
