"""digits_step: scikit-learn's bundled digits with a *step* long-tail profile.

The first half of the classes (the head) keep ``n_max`` training images each, the other half
``n_max / imbalance_factor`` (rounded down, at least 1): the step profile of Buda et al.'s
imbalance studies, beside ltpipe's exponential one. The test set is ltpipe's digits test set
(``test_per_class`` held out per class, balanced). Runs offline.
"""

from __future__ import annotations

from ltpipe.data.sources import DigitsSource
from ltpipe.utils import LtpipeError


class StepDigitsSource(DigitsSource):
    name = "digits_step"

    def profile_counts(self, imbalance_factor: float | None, default_n_max: int = 0) -> list[int]:
        if imbalance_factor is None or imbalance_factor < 1:
            raise LtpipeError(f"source 'digits_step': imbalance_factor={imbalance_factor!r} must "
                              "be a number >= 1 (head count / tail count), e.g. 10")
        n_max = self.n_max(default_n_max or self.default_n_max)
        tail = max(1, int(n_max / imbalance_factor))
        half = self.num_classes // 2
        return [n_max] * half + [tail] * (self.num_classes - half)
