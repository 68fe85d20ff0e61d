"""Analysis of TimeSformer models: attention, explanations and their faithfulness, patterns and cost.

`analysis.explain(model, video, method, target=None, **options)` runs any method of `analysis.EXPLANATIONS`.
"""

from analysis.explanations import EXPLANATIONS, Explanation, explain

__all__ = ["EXPLANATIONS", "Explanation", "explain"]
