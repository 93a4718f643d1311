"""``python -m gatehouse_notes`` (from examples/notes): run the notes service."""

from gatehouse_notes.server import main

main()
