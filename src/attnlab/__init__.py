"""attnlab: efficient attention research.

Interchangeable attention implementations (dense, sliding-window, block-sparse) behind
one call, :func:`attnlab.attention.attention`, plugged into one shared transformer.
"""

__version__ = "0.1.0"
