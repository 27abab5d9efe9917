"""Pictures of attention masks: `plot_spec` draws a spec's block layout and token mask.

python -m attnlab.viz --pattern bigbird --causal --n 512 --out bigbird.png
"""

from attnlab.viz.masks import distinct_heads, plot_spec

__all__ = ["distinct_heads", "plot_spec"]
