from .probunet import ProbUNetConfig

__all__ = ["ProbUNetConfig"]
