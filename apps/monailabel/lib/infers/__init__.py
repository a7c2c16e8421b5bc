from .probunet import ProbUNetInfer

__all__ = ["ProbUNetInfer"]
