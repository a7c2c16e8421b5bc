from .uncertainty import Uncertainty

__all__ = ["Uncertainty"]
