"""The command line: flags -> Settings, files in and out, progress, Ctrl-C."""
