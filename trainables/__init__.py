"""trainables: everything ONE trial needs, plain PyTorch; imports no ray at module import time."""
