# Runs after boot.py; the trusted part, like boot.py, with no application logic. The main loop
# (status page, application, console, trial guard) is cellguard.mainloop, inside the signed image
# boot.py mounted: verified with the rest and updatable over the air (docs/boot.md, "Trial guard").
# Whatever it raises, or a failure to import it, goes to the boot part's cgboot.fallback: an image
# on trial is reverted, and a locked unit's port is held by the lockdown loop, never left to the
# Python REPL. A few lines on purpose: a board compiles this file on its heap at every boot.
try:
    from cellguard import mainloop  # from the verified image (or /lib on a development unit)

    mainloop.main()
except BaseException as e:  # noqa: B036
    try:
        from cgboot import fallback
    except ImportError:  # no boot part at all (a bare development copy): the error as it is
        raise e
    fallback.failed(e)
