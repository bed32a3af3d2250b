"""The hub: receives, verifies and answers what the devices send (server), the wire protocol
(proto), firmware updates it offers (updates)."""
