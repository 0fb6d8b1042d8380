"""What the classifier said about one study, and the reading priority that follows from it."""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass

__all__ = ["Finding", "Priority"]


class Priority(str, enum.Enum):
    """Reading priority of a study on the radiologist's worklist."""

    URGENT = "urgent"
    ROUTINE = "routine"


@dataclass(frozen=True)
class Finding:
    """The pneumonia probability of a study and the operating point it is judged at.

    ``threshold`` is the model card's operating point (:attr:`dicomnode.model.card.ModelCard.threshold`);
    the finding is reported present when ``probability >= threshold``.

    >>> Finding(probability=0.91, threshold=0.5).priority
    <Priority.URGENT: 'urgent'>
    """

    probability: float
    threshold: float

    def __post_init__(self) -> None:
        for name in ("probability", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Finding.{name} must be a number, got {type(value).__name__}")
            # numpy scalars and ints become plain floats so the dataclass compares and hashes
            # the same whatever the caller passed in
            number = float(value)
            if math.isnan(number) or not 0.0 <= number <= 1.0:
                raise ValueError(
                    f"Finding.{name} must lie in [0, 1], got {value!r}: "
                    "pass the model's sigmoid output, not a logit or a percentage"
                )
            object.__setattr__(self, name, number)

    @property
    def present(self) -> bool:
        """Whether the probability reaches the model's operating point."""
        return self.probability >= self.threshold

    @property
    def priority(self) -> Priority:
        """URGENT when the finding is present, else ROUTINE."""
        return Priority.URGENT if self.present else Priority.ROUTINE
