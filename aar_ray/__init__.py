"""aar_ray: automated alignment research campaigns on Ray (weak-to-strong supervision)."""
__version__ = "0.1.0"
