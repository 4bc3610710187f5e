import signal

from engines.tool import run_tool
from fleet.job import STOP_SIGNALS, main, parse_args

status = run_tool(main, parse_args())
# Every output is written and the last line printed: a Ctrl-C or SIGTERM while Ray's threads
# wind down would only turn the finished job's status into a signal death.
for stop_signal in STOP_SIGNALS:
    signal.signal(stop_signal, signal.SIG_IGN)
raise SystemExit(status)
