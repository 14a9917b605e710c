"""The `edgekit` command line: ``edgekit.cli.main`` builds the parser and handles every error."""
