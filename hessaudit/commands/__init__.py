"""One module per CLI command: option parsing and rendering only, no numerics."""
