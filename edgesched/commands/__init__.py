"""Subcommands of the ``edgesched`` command line; each module has add_parser() and run()."""
