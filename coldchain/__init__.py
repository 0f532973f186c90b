"""coldchain: what the gateway, the hub and the simulators share.

The wire contract (topics and message types), config loading and the command line live here.
Nothing in this package imports ``edge_agent``, ``hub`` or ``firmware_sims`` except the
command line and the demo, which wire them together.
"""

__version__ = "0.1.0"
