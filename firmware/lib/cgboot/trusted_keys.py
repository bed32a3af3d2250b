# The public keys this boot part accepts (regenerate with `cellguard image trust a.pem b.pem
# -o firmware/lib/cgboot/trusted_keys.py` before freezing the boot part for a product). Shipped
# empty on purpose: no key of ours is trusted by default, so an unprovisioned build boots nothing
# signed and says so (boot.py falls back loudly). Tests generate fresh keys and put their own
# trusted_keys module ahead of this one on the path.
KEYS = ()
