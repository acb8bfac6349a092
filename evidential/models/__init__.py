"""Model bodies and uncertainty layers (pure PyTorch: tensors in, tensors out, no labml)."""
