"""``python -m aimesh`` runs the CLI."""

from aimesh.cli import main

main()
