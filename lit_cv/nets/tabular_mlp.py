"""TabularMLP: the bank-marketing network of the regularisation chapter.

Three hidden ReLU layers with dropout on the input and on every hidden layer, and a single logit (binary task).
L1 is ``Classifier.l1_lambda``, L2 the optimizer's ``weight_decay``; see ``configs/bank_mlp_*.yaml`` for the
course's five runs (plain, L1, L2, dropout, all three).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TabularMLP(nn.Module):
    """[Dropout(p_input)] -> (Linear -> ReLU -> Dropout(p_hidden)) per hidden layer -> Linear(num_classes).

    Args:
        in_features: input width. The ``lit-cv`` CLI links it from the datamodule's ``num_features`` (the
            bank datamodule computes it from the encoded columns), so configs leave it unset.
        hidden: sizes of the hidden layers.
        num_classes: output logits (1 for the binary task).
        p_input: dropout on the input features.
        p_hidden: dropout after each hidden ReLU.

    Raises:
        ValueError: if ``in_features`` is missing (not linked and not given) or an argument is out of range.
    """

    def __init__(
        self,
        in_features: int | None = None,
        hidden: Sequence[int] = (64, 32, 16),
        num_classes: int = 1,
        p_input: float = 0.0,
        p_hidden: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features is None:
            raise ValueError(
                "TabularMLP in_features is not set. The lit-cv CLI links it from `data.num_features` when the "
                "datamodule has that attribute (datamodules.BankMarketingDataModule); otherwise set "
                "`model.net.init_args.in_features` to the number of input columns."
            )
        if in_features < 1:
            raise ValueError(f"TabularMLP in_features must be >= 1, got {in_features}.")
        if not hidden or min(hidden) < 1:
            raise ValueError(
                f"TabularMLP hidden must be a non-empty list of positive ints, got {list(hidden)}."
            )
        for name, value in (("p_input", p_input), ("p_hidden", p_hidden)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TabularMLP {name} must be in [0, 1), got {value}.")
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Dropout(p_input)]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(p_hidden)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
