from fleet.job import main, parse_args

raise SystemExit(main(parse_args()))
