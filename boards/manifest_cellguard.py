# Shared by every board's manifest.py: freeze cellguard's trusted boot part into the firmware image,
# so the code that verifies the application cannot be changed through the filesystem.
#
# boards/manifest_trusted.py decides exactly what is trusted (the cgboot package: loader, verifier,
# slot manager, trusted keys; docs/boot.md, "Freezing the trusted part"). Were it missing, the whole
# firmware library would be frozen instead: larger, but nothing that boots left on the filesystem.
try:
    include("manifest_trusted.py")  # noqa: F821  (manifest functions are globals of makemanifest)
except Exception:  # makemanifest raises ManifestFileError for a missing file
    try:
        package("cgboot", base_path="../firmware/lib")  # noqa: F821
    except Exception:
        pass
    package("cellguard", base_path="../firmware/lib")  # noqa: F821
