"""The student: model loading, decoding, LoRA training and the adapter registry."""
