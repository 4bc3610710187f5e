from engines.tool import run_tool
from fleet.job import main, parse_args

raise SystemExit(run_tool(main, parse_args()))
