def step_decay(epoch: int, drop: float = 0.8, epochs_drop: int = 3) -> float:
    return drop ** (epoch // epochs_drop)
class StepDecay:
    def __init__(self, drop: float = 0.8, epochs_drop: int = 3) -> None:
        self.drop = drop
        self.epochs_drop = epochs_drop
    def __call__(self, epoch: int) -> float:
        return self.drop ** (epoch // self.epochs_drop)
