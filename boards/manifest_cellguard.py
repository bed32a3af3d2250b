# Shared by every board's manifest.py: freeze cellguard's trusted boot part into the firmware image,
# so the code that verifies the application cannot be changed through the filesystem.
#
# When the bootloader part provides boards/manifest_trusted.py, it decides exactly what is trusted
# (the loader, the verifier, the slot manager and the trusted keys). Until then the whole firmware
# library is frozen: larger, but nothing that boots is left on the filesystem alone.
try:
    include("manifest_trusted.py")  # noqa: F821  (manifest functions are globals of makemanifest)
except Exception:  # makemanifest raises ManifestFileError for a missing file
    try:
        package("cgboot", base_path="../firmware/lib")  # noqa: F821
    except Exception:
        pass
    package("cellguard", base_path="../firmware/lib")  # noqa: F821
