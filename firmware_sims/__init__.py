"""Simulated sensor firmware: the device end of each serial wire, served on pseudo-terminals.

Frames are encoded and decoded here from each device's documented layout, never with the agent's
decoders or pymodbus, so that a codec bug cannot hide on both sides of the wire at once.
"""
