"""The engine behind every run: targets, the compiled optimization loop, devices, memory."""
