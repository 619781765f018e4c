"""Settings (every knob of a run, grouped, with their choices and ranges) and the presets."""
