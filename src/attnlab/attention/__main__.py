"""`python -m attnlab.attention`: print the kinds x impls table (the README's)."""

from attnlab.attention import api  # noqa: F401  (registers the impls)
from attnlab.attention.table import impl_table

if __name__ == "__main__":
    print(impl_table())
