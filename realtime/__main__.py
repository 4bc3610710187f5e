from realtime.cli import entry

entry()
