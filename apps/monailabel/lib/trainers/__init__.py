from .probunet_train import ProbUNetTrain, TrainRequestError

__all__ = ["ProbUNetTrain", "TrainRequestError"]
