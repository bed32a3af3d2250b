"""Test doubles that behave like hardware: the modem emulator, the virtual board, a lossy UDP relay."""
