"""layerfilm: a lossless film of how every layer of a network moved while it trained."""

__version__ = "0.1.0"
