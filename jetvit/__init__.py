"""jetvit: Post-Training Attention Search for pretrained vision foundation ViTs."""

__version__ = "0.1.0"
