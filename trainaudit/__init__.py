"""trainaudit: find, fix and prove the silent bugs of PyTorch training scripts."""

__version__ = "0.2.0"
