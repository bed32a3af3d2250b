# Test scaffolding: CircuitPython's aesio (AES, MODE_ECB/CBC/CTR, encrypt_into) for ECB on a host.
MODE_ECB = 1
MODE_CBC = 2
MODE_CTR = 6


class AES:
    def __init__(self, key, mode=MODE_ECB, IV=None):
        if len(key) not in (16, 24, 32):
            raise ValueError("Key length must be 16, 24, or 32 bytes")
        if mode != MODE_ECB:
            raise NotImplementedError("the shim implements ECB only (all cellguard uses)")
        try:
            import cryptolib

            self._ecb = cryptolib.aes(bytes(key), 1)
            self._encrypt = self._encrypt_cryptolib
        except ImportError:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._ecb = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
            self._encrypt = self._encrypt_cryptography

    def _encrypt_cryptolib(self, src, dest):
        self._ecb.encrypt(bytes(src), dest)

    def _encrypt_cryptography(self, src, dest):
        dest[:16] = self._ecb.update(bytes(src))

    def encrypt_into(self, src, dest):
        # CircuitPython: in ECB mode both buffers must be exactly one 16-byte block.
        if len(src) != 16 or len(dest) != 16:
            raise ValueError("ECB mode requires 16-byte buffers")
        self._encrypt(src, dest)
