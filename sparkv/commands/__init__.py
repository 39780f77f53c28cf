"""Sub-commands of the `sparkv` CLI, one module each."""
