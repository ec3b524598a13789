"""The networks: the built-in families (MLP, DCGAN, the encoder)."""
