"""Model files: written and read, nothing else (a detector restores itself from them)."""
