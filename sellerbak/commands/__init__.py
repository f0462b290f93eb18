"""CLI commands beyond the core ones in sellerbak.cli, one module per group; importing a module
registers its commands on `sellerbak.cli.app`."""
