"""The gateway program: serial drivers, sampling loop, store-and-forward buffer, MQTT publisher."""
