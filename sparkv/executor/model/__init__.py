"""The model half of the real executor: loading, layer-wise prefill, decode, KV files on disk."""
