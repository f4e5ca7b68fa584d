"""``python -m agentfs`` runs the CLI."""

from agentfs.cli import main

main()
