"""sparkv: decide, per (chunk x layer) cell, whether an on-device LLM streams its KV cache or computes it.

Units inside the package are SI and bytes: seconds (`_s`), bytes (`_bytes`), bytes per second (`_bps`),
joules (`_j`) and watts (`_w`). Bits per second appear only at the edges (loaders, printed tables).
"""

__version__ = "0.1.0"
