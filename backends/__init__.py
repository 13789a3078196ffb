"""fsnn.backends: the Backend protocol and its engines (torch, nest, spinnaker)."""
